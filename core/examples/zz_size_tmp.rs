fn main() {
    println!(
        "{}",
        std::mem::size_of::<gateway_metrics_core::usage::UsageReader>()
    );
}
