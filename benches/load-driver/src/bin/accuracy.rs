//! The load driver of `scripts/bench-accuracy.sh` (BENCHMARKS.md,
//! "Rate-limit and credit accuracy"): it creates one key through keyward's
//! admin API (admin key from the environment, `KEYWARD_ADMIN_KEY`), then
//! calls `orders.v1.OrderService/CreateOrder` with it on the given order
//! services (each behind the `keyward-auth` layer, each balancing over the
//! keyward replicas), round-robin, and judges what was admitted:
//!
//! ```text
//! accuracy rate --limit 100 --window-secs 1 --rate 300 --windows 20 --targets URL,URL
//! accuracy credits --credits 10000 --concurrency 64 --targets URL,URL
//! accuracy idempotent --credits 1000 --targets URL,URL
//! ```
//!
//! A call is *admitted* when it succeeds and *refused* when the layer answers
//! RESOURCE_EXHAUSTED with its `ratelimit` metadata (rate limited or out of
//! credits). Anything else (another code, or a RESOURCE_EXHAUSTED without
//! that metadata, such as a shed) is an error and fails the run. Each mode
//! prints its figures, a PASS or FAIL line and a Markdown table row
//! (`markdown: | ... |`); the exit status is 0 on PASS, 1 on FAIL, 2 when the
//! run could not be made. A benchmark tool, not part of keyward.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use keyward::pb::key_admin_service_client::KeyAdminServiceClient;
use keyward::pb::{CreateKeyRequest, Credits, RateLimit};
use orders_service::pb::CreateOrderRequest;
use orders_service::pb::order_service_client::OrderServiceClient;
use tokio::sync::mpsc;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

#[derive(Debug, Parser)]
#[command(
    name = "accuracy",
    about = "Measures rate-limit and credit accuracy across keyward replicas",
    after_help = "The key is created with the admin key in KEYWARD_ADMIN_KEY. \
                  Exit status: 0 PASS, 1 FAIL, 2 the run could not be made."
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// A key limited to LIMIT calls per WINDOW-SECS, driven open-loop at RATE
    /// req/s (at least 3x the limit); admitted calls counted per window.
    Rate {
        #[command(flatten)]
        common: Common,
        /// Calls admitted per window.
        #[arg(long)]
        limit: u64,
        /// The window, in seconds.
        #[arg(long)]
        window_secs: u64,
        /// Requests per second sent, whatever the answers (open loop).
        #[arg(long)]
        rate: f64,
        /// Full windows measured.
        #[arg(long)]
        windows: u64,
        /// Seconds of load before the first measured window (at least).
        #[arg(long, default_value_t = 1)]
        warmup_secs: u64,
    },
    /// A key with CREDITS credits, hammered by CONCURRENCY callers until only
    /// refusals come back for QUIET-SECS; admitted total vs CREDITS.
    Credits {
        #[command(flatten)]
        common: Common,
        /// The key's credits.
        #[arg(long)]
        credits: u64,
        /// Calls in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
        /// Seconds of nothing but refusals that end the run.
        #[arg(long, default_value_t = 2)]
        quiet_secs: u64,
        /// Gives up (FAIL) after this many seconds.
        #[arg(long, default_value_t = 600)]
        max_secs: u64,
    },
    /// A key with CREDITS credits; CREDITS distinct idempotency keys, each
    /// sent twice at once to two services, all admitted; then refused.
    Idempotent {
        #[command(flatten)]
        common: Common,
        /// The key's credits (and the number of distinct idempotency keys).
        #[arg(long)]
        credits: u64,
        /// Pairs in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// keyward's gRPC address, for CreateKey.
    #[arg(long, env = "KEYWARD_URL", default_value = "http://127.0.0.1:50051")]
    keyward_url: String,
    /// The order services, comma-separated; calls go to them round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    targets: Vec<String>,
    /// Deadline of each call, in seconds (a call past it is an error).
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().mode {
        Mode::Rate {
            common,
            limit,
            window_secs,
            rate,
            windows,
            warmup_secs,
        } => rate_mode(&common, limit, window_secs, rate, windows, warmup_secs).await,
        Mode::Credits {
            common,
            credits,
            concurrency,
            quiet_secs,
            max_secs,
        } => credits_mode(&common, credits, concurrency, quiet_secs, max_secs).await,
        Mode::Idempotent {
            common,
            credits,
            concurrency,
        } => idempotent_mode(&common, credits, concurrency).await,
    };
    match result {
        Ok(true) => {
            println!("PASS");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("FAIL");
            ExitCode::from(1)
        }
        Err(message) => {
            eprintln!("accuracy: {message}");
            ExitCode::from(2)
        }
    }
}

// ------------------------------------------------------------------ calls

/// What one CreateOrder call came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Admitted,
    Refused,
    Error(String),
}

/// The order services, and the key every call presents.
struct Load {
    clients: Vec<OrderServiceClient<Channel>>,
    bearer: AsciiMetadataValue,
}

impl Load {
    /// One HTTP/2 connection per target, made now (so the first measured
    /// calls do not pay for it).
    async fn connect(common: &Common, secret: &str) -> Result<Self, String> {
        let mut clients = Vec::with_capacity(common.targets.len());
        for target in &common.targets {
            let channel = endpoint(target, common.timeout_secs)?
                .connect()
                .await
                .map_err(|error| format!("cannot connect to {target}: {error}"))?;
            clients.push(OrderServiceClient::new(channel));
        }
        let bearer = format!("Bearer {secret}")
            .parse()
            .map_err(|_| "the new key is not a valid header value".to_owned())?;
        Ok(Self { clients, bearer })
    }

    /// CreateOrder on target `n` modulo their number, with `idempotency_key`
    /// as the `idempotency-key` header if given.
    async fn call(&self, n: u64, idempotency_key: Option<&str>) -> Outcome {
        let index = usize::try_from(n % self.clients.len() as u64).unwrap_or_default();
        let mut client = self.clients[index].clone();
        let mut request = Request::new(CreateOrderRequest {
            item: "accuracy".to_owned(),
            quantity: 1,
        });
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        if let Some(key) = idempotency_key {
            match key.parse() {
                Ok(value) => request.metadata_mut().insert("idempotency-key", value),
                Err(_) => return Outcome::Error(format!("bad idempotency key {key:?}")),
            };
        }
        match client.create_order(request).await {
            Ok(_) => Outcome::Admitted,
            Err(status)
                if status.code() == Code::ResourceExhausted
                    && status.metadata().contains_key("ratelimit") =>
            {
                Outcome::Refused
            }
            Err(status) => Outcome::Error(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

fn endpoint(url: &str, timeout_secs: u64) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|error| format!("invalid URL {url:?}: {error}"))?
        .timeout(Duration::from_secs(timeout_secs)))
}

/// CreateKey (scope `orders:write`, what CreateOrder needs) with `limits`
/// and `credits`; returns the raw key.
async fn create_key(
    common: &Common,
    name: &str,
    rate_limits: Vec<RateLimit>,
    credits: Option<Credits>,
) -> Result<String, String> {
    let admin = std::env::var("KEYWARD_ADMIN_KEY")
        .map_err(|_| "KEYWARD_ADMIN_KEY (an admin key) is not set".to_owned())?;
    let channel = endpoint(&common.keyward_url, common.timeout_secs)?
        .connect()
        .await
        .map_err(|error| format!("cannot connect to keyward {}: {error}", common.keyward_url))?;
    let mut request = Request::new(CreateKeyRequest {
        name: name.to_owned(),
        scopes: vec!["orders:write".to_owned()],
        rate_limits,
        credits,
        ..Default::default()
    });
    let bearer = format!("Bearer {admin}")
        .parse()
        .map_err(|_| "KEYWARD_ADMIN_KEY is not a valid header value".to_owned())?;
    request.metadata_mut().insert("authorization", bearer);
    let created = KeyAdminServiceClient::new(channel)
        .create_key(request)
        .await
        .map_err(|status| format!("CreateKey: {:?}: {}", status.code(), status.message()))?;
    Ok(created.into_inner().secret)
}

/// A key with `credits` credits and no rate limit; returns the raw key.
async fn key_with_credits(common: &Common, name: &str, credits: u64) -> Result<String, String> {
    let credits = Credits {
        remaining: i64::try_from(credits).map_err(|_| "--credits too large")?,
        ..Default::default()
    };
    create_key(common, name, Vec::new(), Some(credits)).await
}

/// Counts of outcomes, and the first few errors.
#[derive(Debug, Default)]
struct Tally {
    admitted: u64,
    refused: u64,
    errors: u64,
    first_errors: Vec<String>,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Admitted => self.admitted += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Error(message) => {
                self.errors += 1;
                if self.first_errors.len() < 5 {
                    self.first_errors.push(message);
                }
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.admitted += other.admitted;
        self.refused += other.refused;
        self.errors += other.errors;
        for message in other.first_errors {
            if self.first_errors.len() < 5 {
                self.first_errors.push(message);
            }
        }
    }

    /// Prints the counts and the first errors; true if there was none.
    fn report(&self) -> bool {
        println!(
            "admitted {}, refused {}, errors {}",
            self.admitted, self.refused, self.errors
        );
        for message in &self.first_errors {
            println!("  error: {message}");
        }
        self.errors == 0
    }
}

fn epoch_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

// ------------------------------------------------------------------- rate

/// Admitted calls per full window: min, median, max, and whether every one
/// lies within 0.95·limit ..= 1.05·limit.
#[derive(Debug, PartialEq)]
struct WindowStats {
    min: u64,
    median: f64,
    max: u64,
    all_within: bool,
}

/// Whether `admitted` lies within 0.95·limit ..= 1.05·limit (exact, in
/// integers).
fn within(admitted: u64, limit: u64) -> bool {
    admitted * 100 >= limit * 95 && admitted * 100 <= limit * 105
}

fn window_stats(admitted: &[u64], limit: u64) -> Option<WindowStats> {
    let mut sorted = admitted.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let median = match n {
        0 => return None,
        n if n % 2 == 1 => sorted[n / 2] as f64,
        n => (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0,
    };
    Some(WindowStats {
        min: sorted[0],
        median,
        max: sorted[n - 1],
        all_within: sorted.iter().all(|&count| within(count, limit)),
    })
}

async fn rate_mode(
    common: &Common,
    limit: u64,
    window_secs: u64,
    rate: f64,
    windows: u64,
    warmup_secs: u64,
) -> Result<bool, String> {
    if limit == 0 || window_secs == 0 || windows == 0 {
        return Err("--limit, --window-secs and --windows must be at least 1".to_owned());
    }
    let overload = rate * window_secs as f64 / limit as f64;
    if overload < 3.0 {
        return Err(format!(
            "--rate {rate} is {overload:.2}x the limit; the measurement needs at least 3x"
        ));
    }
    let limits = vec![RateLimit {
        name: "requests".to_owned(),
        limit: i64::try_from(limit).map_err(|_| "--limit too large")?,
        duration: Some(prost_types::Duration {
            seconds: i64::try_from(window_secs).map_err(|_| "--window-secs too large")?,
            nanos: 0,
        }),
        cost: 0,
    }];
    let secret = create_key(common, "accuracy: rate", limits, None).await?;
    let load = Arc::new(Load::connect(common, &secret).await?);

    // Windows are aligned on the epoch (window w covers [w·W, (w+1)·W)).
    // The load runs from now through the warm-up, then `windows` full
    // windows, then a tenth of a window more, so the last full window is
    // overloaded to its end; the windows before the first full one and the
    // partial one after the last are dropped.
    let window_ms = window_secs * 1000;
    let now = epoch_ms();
    let first = (now + warmup_secs * 1000) / window_ms + 1;
    let end = (first + windows) * window_ms;
    let stop = Instant::now() + Duration::from_millis(end + (window_ms / 10).max(200) - now);
    println!(
        "rate: limit {limit} per {window_secs} s, {rate} req/s ({overload:.1}x) over {} service(s), \
         {windows} full windows, about {} s",
        common.targets.len(),
        stop.saturating_duration_since(Instant::now()).as_secs()
    );

    // Open loop: call n is sent at start + n/rate whatever the earlier ones
    // answered (each its own task), so a slow answer never lowers the load.
    // Each outcome is stamped with the wall-clock time it was received.
    let (results, mut received) = mpsc::unbounded_channel();
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        let at = start + Duration::from_secs_f64(sent as f64 / rate);
        if at >= stop {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let (load, results) = (Arc::clone(&load), results.clone());
        tokio::spawn(async move {
            let outcome = load.call(sent, None).await;
            // The receiver lives until every sender is gone.
            let _ = results.send((epoch_ms(), outcome));
        });
        sent += 1;
    }
    let sending = start.elapsed();
    drop(results);

    // Admissions are attributed to the window of their receive time. Under
    // overload that is exact: with a fixed window, the limit's N admissions
    // are the first N calls decided in the window, i.e. right at its start
    // (a few ms in), and every call after them is refused; so no admitted
    // call is decided near the window's end and received in the next one.
    // (A limiter that spreads its admissions, such as a GCRA, admits about
    // N per any span of W, and a call straddling a boundary moves one
    // admission by one window: far inside the 5 % bound.)
    let mut tally = Tally::default();
    let mut per_window: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    while let Some((at, outcome)) = received.recv().await {
        let counts = per_window.entry(at / window_ms).or_default();
        match outcome {
            Outcome::Admitted => counts.0 += 1,
            Outcome::Refused => counts.1 += 1,
            Outcome::Error(_) => {}
        }
        tally.add(outcome);
    }

    println!(
        "sent {sent} calls in {:.1} s ({:.0} req/s)",
        sending.as_secs_f64(),
        sent as f64 / sending.as_secs_f64()
    );
    let mut admitted = Vec::new();
    for (i, window) in (first..first + windows).enumerate() {
        let (ok, refused) = per_window.get(&window).copied().unwrap_or_default();
        println!(
            "window {:>3} (from {} s): admitted {ok:>7}, refused {refused:>7}{}",
            i + 1,
            window * window_secs,
            if within(ok, limit) {
                ""
            } else {
                "  OUT OF BOUNDS"
            }
        );
        admitted.push(ok);
    }
    let no_errors = tally.report();
    let stats = window_stats(&admitted, limit).ok_or("no window measured")?;
    let pass = no_errors && stats.all_within;
    let (low, high) = (limit * 95 / 100, limit * 105 / 100);
    println!(
        "{windows} full windows: admitted min {}, median {}, max {} (bounds {low} … {high} of \
         {limit}): {}",
        stats.min,
        stats.median,
        stats.max,
        verdict(pass)
    );
    println!(
        "markdown: | {limit} / {window_secs} s | {rate:.0} req/s ({overload:.1}x) | {windows} | \
         {} / {} / {} | {low} … {high} | {} | {} |",
        stats.min,
        stats.median,
        stats.max,
        tally.errors,
        verdict(pass)
    );
    Ok(pass)
}

// ---------------------------------------------------------------- credits

/// How a [`drain`] went.
struct Drained {
    tally: Tally,
    elapsed: Duration,
    /// Whether it ended as it should: on refusals only.
    quiet: bool,
    ended_by: String,
}

/// `concurrency` callers calling until `quiet_secs` pass with refusals only
/// (or `over_admitted` calls are admitted, 100 fail, or `max_secs` pass).
/// With `idempotency_prefix`, every call carries its own new idempotency
/// key (`PREFIX-N`).
async fn drain(
    load: Arc<Load>,
    concurrency: u64,
    quiet_secs: u64,
    max_secs: u64,
    over_admitted: u64,
    idempotency_prefix: Option<String>,
) -> Result<Drained, String> {
    /// Shared by the callers: milliseconds are since `start`.
    struct Shared {
        start: Instant,
        next: AtomicU64,
        admitted: AtomicU64,
        errors: AtomicU64,
        last_admitted_ms: AtomicU64,
        stop: AtomicBool,
        prefix: Option<String>,
    }
    let shared = Arc::new(Shared {
        start: Instant::now(),
        next: AtomicU64::new(0),
        admitted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        last_admitted_ms: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        prefix: idempotency_prefix,
    });
    let (quiet_ms, max_ms) = (quiet_secs * 1000, max_secs * 1000);
    let mut callers = Vec::new();
    for _ in 0..concurrency {
        let (load, shared) = (Arc::clone(&load), Arc::clone(&shared));
        callers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while !shared.stop.load(Ordering::Relaxed) {
                let n = shared.next.fetch_add(1, Ordering::Relaxed);
                let key = shared.prefix.as_ref().map(|prefix| format!("{prefix}-{n}"));
                let outcome = load.call(n, key.as_deref()).await;
                let now = u64::try_from(shared.start.elapsed().as_millis()).unwrap_or(u64::MAX);
                let stop = match outcome {
                    Outcome::Admitted => {
                        shared.last_admitted_ms.fetch_max(now, Ordering::Relaxed);
                        shared.admitted.fetch_add(1, Ordering::Relaxed) + 1 >= over_admitted
                    }
                    Outcome::Refused => {
                        now.saturating_sub(shared.last_admitted_ms.load(Ordering::Relaxed))
                            >= quiet_ms
                    }
                    // Errors fail the run; a hundred are enough to tell.
                    Outcome::Error(_) => shared.errors.fetch_add(1, Ordering::Relaxed) + 1 >= 100,
                };
                if stop || now >= max_ms {
                    shared.stop.store(true, Ordering::Relaxed);
                }
                tally.add(outcome);
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for caller in callers {
        tally.merge(
            caller
                .await
                .map_err(|error| format!("a caller failed: {error}"))?,
        );
    }
    let elapsed = shared.start.elapsed();
    let (quiet, ended_by) = if tally.admitted >= over_admitted {
        (false, format!("over-admission ({over_admitted} admitted)"))
    } else if tally.errors >= 100 {
        (false, "100 errors".to_owned())
    } else if elapsed.as_millis() >= u128::from(max_ms) {
        (false, format!("the time limit ({max_secs} s)"))
    } else {
        (true, format!("{quiet_secs} s of refusals only"))
    };
    Ok(Drained {
        tally,
        elapsed,
        quiet,
        ended_by,
    })
}

/// Spends credits from `concurrency` callers until a call is refused
/// `quiet_secs` after the last admission (or over-admission is beyond doubt,
/// or the time is up).
async fn credits_mode(
    common: &Common,
    credits: u64,
    concurrency: u64,
    quiet_secs: u64,
    max_secs: u64,
) -> Result<bool, String> {
    let secret = key_with_credits(common, "accuracy: credits", credits).await?;
    let load = Arc::new(Load::connect(common, &secret).await?);
    println!(
        "credits: {credits} credits, {concurrency} concurrent callers over {} service(s)",
        common.targets.len()
    );
    // Twice the credits admitted is a FAIL whatever the exact figure: stop
    // there (a keyward that enforces nothing would otherwise never refuse).
    let Drained {
        tally,
        elapsed,
        quiet,
        ended_by,
    } = drain(
        load,
        concurrency,
        quiet_secs,
        max_secs,
        2 * credits + 100,
        None,
    )
    .await?;
    let calls = tally.admitted + tally.refused + tally.errors;
    println!(
        "{calls} calls in {:.1} s ({:.0} req/s); ended by {ended_by}",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
    );
    let no_errors = tally.report();
    let slack = (credits as f64 - tally.admitted as f64) / credits.max(1) as f64 * 100.0;
    let exact = tally.admitted <= credits && tally.admitted * 1000 >= credits * 995;
    let pass = no_errors && quiet && exact;
    println!(
        "admitted {} of {credits} credits: slack (C - admitted) / C = {slack:.3} % \
         (bounds 0 … 0.5 %): {}",
        tally.admitted,
        verdict(pass)
    );
    println!(
        "markdown: | {credits} | {concurrency} concurrent callers | {} | {slack:.3} % | \
         0 … 0.5 % | {} | {} |",
        tally.admitted,
        tally.errors,
        verdict(pass)
    );
    Ok(pass)
}

// ------------------------------------------------------------- idempotent

/// `credits` distinct idempotency keys, each sent twice at once to two
/// different services. The two copies of a key must get the same answer (a
/// copy refused while its twin was still being decided is retried, as
/// `retry-after` says, up to 5 times). Then new keys are called until only
/// refusals come (draining what replicas still hold leased): if every key
/// was charged once, the keys admitted add up to exactly `credits`; a retry
/// charged again would leave fewer.
async fn idempotent_mode(common: &Common, credits: u64, concurrency: u64) -> Result<bool, String> {
    let secret = key_with_credits(common, "accuracy: idempotent", credits).await?;
    let load = Arc::new(Load::connect(common, &secret).await?);
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    println!(
        "idempotent: {credits} credits, {credits} idempotency keys sent twice each \
         ({concurrency} pairs at once) over {} service(s)",
        common.targets.len()
    );

    let next = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for _ in 0..concurrency {
        let (load, next) = (Arc::clone(&load), Arc::clone(&next));
        callers.push(tokio::spawn(async move {
            let (mut tally, mut admitted_keys, mut disagreeing) = (Tally::default(), 0u64, 0u64);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= credits {
                    break;
                }
                let key = format!("accuracy-{run:x}-{n}");
                // Targets n and n + 1: two different services.
                let (mut first, mut second) =
                    tokio::join!(load.call(n, Some(&key)), load.call(n + 1, Some(&key)));
                for _ in 0..5 {
                    if first == second {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if first == Outcome::Refused {
                        first = load.call(n, Some(&key)).await;
                    }
                    if second == Outcome::Refused {
                        second = load.call(n + 1, Some(&key)).await;
                    }
                }
                admitted_keys +=
                    u64::from(first == Outcome::Admitted || second == Outcome::Admitted);
                disagreeing += u64::from(first != second);
                tally.add(first);
                tally.add(second);
            }
            (tally, admitted_keys, disagreeing)
        }));
    }
    let (mut tally, mut admitted_keys, mut disagreeing) = (Tally::default(), 0, 0);
    for caller in callers {
        let (their_tally, their_keys, their_disagreeing) = caller
            .await
            .map_err(|error| format!("a caller failed: {error}"))?;
        tally.merge(their_tally);
        admitted_keys += their_keys;
        disagreeing += their_disagreeing;
    }
    let no_errors = tally.report();
    println!(
        "keys admitted: {admitted_keys} of {credits}; pairs whose copies disagree: {disagreeing}"
    );
    let drained = drain(
        load,
        concurrency,
        2,
        120,
        credits + 100,
        Some(format!("accuracy-{run:x}-drain")),
    )
    .await?;
    let drained_keys = drained.tally.admitted;
    println!(
        "then new keys until refusals only: {drained_keys} admitted, ended by {}",
        drained.ended_by
    );
    let total = admitted_keys + drained_keys;
    let pass = no_errors
        && drained.tally.errors == 0
        && drained.quiet
        && disagreeing == 0
        && total == credits;
    println!(
        "markdown: | {credits} credits, {credits} keys × 2 copies | {concurrency} pairs at once | \
         {admitted_keys} + {drained_keys} = {total} | {disagreeing} | {credits}, 0 | {} | {} |",
        tally.errors + drained.tally.errors,
        verdict(pass)
    );
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use keyward_auth::{
        Denial, Environment, Identity, IdentityDetails, Throttle, ValidationFuture,
        ValidationRequest, Validator, Verdict,
    };
    use orders_service::OrdersServer;

    use super::*;

    /// Allows `budget` calls of the key `good`, then refuses it as rate
    /// limited; denies every other key. Remembers the idempotency keys.
    struct Budget {
        left: AtomicU64,
        idempotency_keys: Mutex<Vec<Option<String>>>,
    }

    impl Validator for Budget {
        fn validate<'a>(&'a self, request: ValidationRequest<'a>) -> ValidationFuture<'a> {
            Box::pin(async move {
                self.idempotency_keys
                    .lock()
                    .expect("not poisoned")
                    .push(request.idempotency_key.map(str::to_owned));
                if request.key != "good" {
                    return Ok(Verdict::Deny(Denial::Unauthenticated));
                }
                let spent = self
                    .left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                        left.checked_sub(1)
                    });
                if spent.is_err() {
                    return Ok(Verdict::Deny(Denial::RateLimited(Throttle {
                        name: "requests".into(),
                        limit: 2,
                        remaining: 0,
                        reset: Some(Duration::from_secs(1)),
                        retry_after: Duration::from_secs(1),
                        window: Some(Duration::from_secs(1)),
                    })));
                }
                Ok(Verdict::Allow(Identity::new(IdentityDetails {
                    key_id: "key_good".to_owned(),
                    organization_id: "acme".to_owned(),
                    workspace_id: None,
                    name: "good".to_owned(),
                    scopes: vec!["orders:write".to_owned()],
                    metadata: Default::default(),
                    user_id: None,
                    service_account_id: None,
                    environment: Environment::Live,
                    expires_at: None,
                })))
            })
        }
    }

    #[tokio::test]
    async fn outcomes_are_admitted_refused_with_ratelimit_or_errors() {
        let validator = Arc::new(Budget {
            left: AtomicU64::new(2),
            idempotency_keys: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let server = OrdersServer::with_validator(listener, Arc::clone(&validator));
        let common = Common {
            keyward_url: "http://127.0.0.1:1".to_owned(),
            targets: vec![format!("http://{}", server.local_addr())],
            timeout_secs: 5,
        };
        tokio::spawn(server.run_until(std::future::pending()));

        let load = Load::connect(&common, "good").await.expect("connects");
        assert_eq!(load.call(0, Some("retry-1")).await, Outcome::Admitted);
        assert_eq!(load.call(1, None).await, Outcome::Admitted);
        assert_eq!(load.call(2, None).await, Outcome::Refused);
        let seen = validator
            .idempotency_keys
            .lock()
            .expect("not poisoned")
            .clone();
        assert_eq!(seen[0].as_deref(), Some("retry-1"), "the header is sent");
        assert_eq!(seen[1], None);

        let stranger = Load::connect(&common, "bad").await.expect("connects");
        match stranger.call(0, None).await {
            Outcome::Error(message) => assert!(message.contains("Unauthenticated"), "{message}"),
            other => panic!("an unknown key is an error, not {other:?}"),
        }
    }

    #[test]
    fn the_bounds_are_five_percent_either_side_inclusive() {
        assert!(within(95, 100) && within(100, 100) && within(105, 100));
        assert!(!within(94, 100) && !within(106, 100));
        assert!(within(950, 1000) && within(1050, 1000));
        assert!(!within(949, 1000) && !within(1051, 1000));
    }

    #[test]
    fn window_stats_give_min_median_max_and_judge_every_window() {
        let stats = window_stats(&[101, 99, 100, 104], 100).expect("windows");
        assert_eq!(
            stats,
            WindowStats {
                min: 99,
                median: 100.5,
                max: 104,
                all_within: true
            }
        );
        let one_out = window_stats(&[100, 100, 300], 100).expect("windows");
        assert_eq!((one_out.median, one_out.all_within), (100.0, false));
        assert_eq!(window_stats(&[], 100), None);
    }

    #[test]
    fn tally_keeps_counts_and_the_first_five_errors() {
        let mut tally = Tally::default();
        tally.add(Outcome::Admitted);
        tally.add(Outcome::Refused);
        for n in 0..7 {
            tally.add(Outcome::Error(format!("e{n}")));
        }
        let mut other = Tally::default();
        other.add(Outcome::Admitted);
        tally.merge(other);
        assert_eq!((tally.admitted, tally.refused, tally.errors), (2, 1, 7));
        assert_eq!(tally.first_errors, ["e0", "e1", "e2", "e3", "e4"]);
    }
}
