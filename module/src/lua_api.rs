//! C-ABI functions for Lua (LuaJIT FFI).
