//! Argument checks of the calls Lua makes (the module's C ABI), kept here so that they can be
//! tested and fuzzed without nginx.

use std::ffi::CStr;

/// Largest token count accepted in one call: beyond any real response, below f64's exact range.
pub const MAX_TOKENS: f64 = 1e12;
/// Longest string argument accepted (label values are cut to 256 bytes later anyway).
pub const MAX_ARG_BYTES: usize = 64 * 1024;

/// A token count from Lua: a finite, non-negative whole number no larger than [`MAX_TOKENS`].
/// (The range test also refuses NaN and infinities; a whole number is one that converts to an
/// integer and back unchanged: no `fract`, which is a libm call, on each of Lua's five counts.
/// `i64`: one instruction each way, exact below 2^53.)
#[inline]
pub fn token_count(v: f64) -> Option<u64> {
    if !(0.0..=MAX_TOKENS).contains(&v) {
        return None;
    }
    let n = v as i64;
    (n as f64 == v).then_some(n as u64)
}

/// A value for a declared metric: finite; a counter's increment also non-negative. The error is
/// what the C ABI hands back to Lua.
pub fn metric_value(v: f64, counter_increment: bool) -> Result<f64, &'static CStr> {
    if !v.is_finite() {
        Err(c"value must be a finite number")
    } else if counter_increment && v < 0.0 {
        Err(c"counter increment must not be negative")
    } else {
        Ok(v)
    }
}

/// The length check for string arguments.
pub fn arg_len_ok(len: usize) -> bool {
    len <= MAX_ARG_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts() {
        assert_eq!(token_count(0.0), Some(0));
        assert_eq!(token_count(123.0), Some(123));
        assert_eq!(token_count(1e12), Some(1_000_000_000_000));
        for bad in [
            -1.0,
            0.5,
            f64::NAN,
            f64::INFINITY,
            -0.0001,
            1e12 + 1.0,
            1e300,
        ] {
            assert_eq!(token_count(bad), None, "{bad}");
        }
    }

    /// The cheap check is the definition: finite, in range, no fractional part.
    #[test]
    fn token_count_matches_its_definition() {
        let reference = |v: f64| {
            (v.is_finite() && (0.0..=MAX_TOKENS).contains(&v) && v.fract() == 0.0)
                .then_some(v as u64)
        };
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut values = vec![
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            1e12 - 0.5,
            1e12 + 0.5,
            2f64.powi(53),
        ];
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Raw bit patterns (every exponent), and numbers of the size tokens have.
            values.push(f64::from_bits(x));
            values.push(
                (x % 2_000_000_000_000) as f64 / [1.0, 2.0, 4.0, 10.0][(x >> 60) as usize % 4],
            );
        }
        for v in values {
            assert_eq!(token_count(v), reference(v), "{v:e}");
        }
    }

    #[test]
    fn metric_values() {
        assert!(metric_value(-1.0, false).is_ok());
        assert!(metric_value(-1.0, true).is_err());
        assert!(metric_value(f64::NAN, false).is_err());
        assert!(metric_value(f64::NEG_INFINITY, false).is_err());
    }
}
