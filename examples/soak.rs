//! The soak of `tests/soak.rs`, for long runs: concurrent requests on a multi-thread runtime,
//! each checking after every await that it sees only its own values.
//!
//! ```text
//! cargo run --release --example soak -- --requests 1000000 [--concurrency 50000] [--workers 4]
//! ```
//!
//! Prints the requests run, the checks made (and how many the workload implies), the
//! violations and the seconds taken; exits with status 1 if any check failed or did not run.

use std::process::ExitCode;

#[path = "../tests/soak.rs"]
mod soak;

fn usage() -> ExitCode {
    eprintln!(
        "usage: soak [--requests N] [--concurrency N] [--workers N]\n\
         defaults: 50000 requests, 50000 in flight at once, 4 workers"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut config = soak::Config {
        requests: 50_000,
        concurrency: 50_000,
        workers: 4,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|value| value.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--requests", Some(requests)) if requests > 0 => config.requests = requests,
            ("--concurrency", Some(n)) if n > 0 => match usize::try_from(n) {
                Ok(n) => config.concurrency = n,
                Err(_) => return usage(),
            },
            ("--workers", Some(n)) if n > 0 => match usize::try_from(n) {
                Ok(n) => config.workers = n,
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }

    let report = soak::run(config);
    println!(
        "requests:   {} ({} in flight at most)",
        report.requests,
        config
            .concurrency
            .min(usize::try_from(report.requests).unwrap_or(usize::MAX))
    );
    println!(
        "checks:     {} (the workload implies {})",
        report.checks, report.expected_checks
    );
    println!("violations: {}", report.violations);
    println!(
        "threads:    {} runtime threads' own contexts checked",
        report.threads_checked
    );
    println!("seconds:    {:.2}", report.seconds);
    if let Some(first) = &report.first_violation {
        println!("first violation: {first}");
    }
    if report.violations == 0 && report.checks == report.expected_checks {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
