//! Bounded proptest runs for keyward's fuzz targets, on stable Rust.
//!
//! Every target runs through [`fuzz`], which reads its budget from the
//! environment so CI stays fast and `scripts/fuzz.sh` can run for minutes:
//! - `KEYWARD_FUZZ_CASES`: cases per target (default: the target's own,
//!   small enough for CI);
//! - `KEYWARD_FUZZ_SECONDS`: wall-clock bound per target (default 20);
//!   cases left when it passes are skipped, never failed. Cases run in
//!   chunks of 32, each chunk with its own seed (the base seed plus the
//!   chunk's number), and the bound is checked between chunks;
//! - `KEYWARD_FUZZ_SEED`: a fixed seed, to replay a failure; random otherwise.
//!
//! Each run prints one `FUZZ target=… executions=… seed=… result=…` line on
//! stderr (`scripts/fuzz.sh` adds them up). A panic in the code under test
//! is a failure like any failed assertion; proptest shrinks it and the
//! panic message names the seed and the smallest failing input.
//!
//! Included by path from `crates/keyward-core/tests/fuzz.rs` and
//! `tests/api/fuzz.rs`.

use std::cell::Cell;
use std::fmt::Debug;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseResult, TestRunner};

/// Wall-clock bound per target unless `KEYWARD_FUZZ_SECONDS` says otherwise.
const DEFAULT_SECONDS: u64 = 20;
/// Cases run with one seed.
const CHUNK: u32 = 32;

fn env_number(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    match raw.trim().parse() {
        Ok(value) => Some(value),
        Err(_) => panic!("{name} must be a whole number, not {raw:?}"),
    }
}

/// Runs `test` on values of `strategy` within the budget described in the
/// module documentation; panics (failing the test) on the first failure,
/// after shrinking, with the seed that replays it.
pub fn fuzz<S>(
    target: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> TestCaseResult,
) where
    S: Strategy,
    S::Value: Debug,
{
    let cases = env_number("KEYWARD_FUZZ_CASES").map_or(default_cases, |cases| {
        u32::try_from(cases).unwrap_or(u32::MAX)
    });
    let bound = Duration::from_secs(env_number("KEYWARD_FUZZ_SECONDS").unwrap_or(DEFAULT_SECONDS));
    let seed = env_number("KEYWARD_FUZZ_SEED")
        .unwrap_or_else(|| RandomState::new().hash_one(Instant::now()));
    let started = Instant::now();
    let executions = Cell::new(0u64);
    let mut generated = 0u64;
    let mut failure = None;
    // Chunks of cases, each with its own seed, so the time bound is checked
    // between chunks and a failure replays from the seed of its chunk.
    for chunk in 0u64.. {
        if generated >= u64::from(cases) || started.elapsed() > bound {
            break;
        }
        let chunk_cases = CHUNK.min(cases - u32::try_from(generated).unwrap_or(cases));
        let chunk_seed = seed.wrapping_add(chunk);
        let config = Config {
            cases: chunk_cases,
            rng_seed: RngSeed::Fixed(chunk_seed),
            // The seed printed below replays a failure; no files in the tree.
            failure_persistence: None,
            max_shrink_time: 60_000,
            ..Config::default()
        };
        let outcome = TestRunner::new(config).run(&strategy, |value| {
            executions.set(executions.get() + 1);
            test(value)
        });
        generated += u64::from(chunk_cases);
        if let Err(error) = outcome {
            failure = Some((chunk_seed, error.to_string()));
            break;
        }
    }
    eprintln!(
        "FUZZ target={target} executions={} seed={seed} seconds={:.1} result={}",
        executions.get(),
        started.elapsed().as_secs_f64(),
        if failure.is_none() { "ok" } else { "FAILED" },
    );
    if let Some((chunk_seed, error)) = failure {
        panic!(
            "fuzz target {target} failed; replay with KEYWARD_FUZZ_SEED={chunk_seed} \
             KEYWARD_FUZZ_CASES={CHUNK}: {error}"
        );
    }
}
