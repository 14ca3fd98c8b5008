//! The `keyward` binary: bootstrap prints only the raw key; `audit verify`
//! finds a tampered event (exit code 1); `serve` starts on the embedded
//! default; SIGTERM flushes pending last-used data.

use std::process::{Command, Stdio};
use std::time::Duration;

use keyward::pb;
use keyward::pb::key_admin_service_client::KeyAdminServiceClient;
use keyward::pb::key_validation_service_client::KeyValidationServiceClient;
use keyward_core::ApiKeySecret;
use sea_orm::{ConnectionTrait, Statement};

use crate::e2e_test;
use crate::helpers::process::{
    KeywardProcess, free_addr, keyward_command, log_file, output_logged, run_keyward,
};
use crate::helpers::{
    CLIENT_IP, TestApp, USER_AGENT, eventually, record_secret, try_validate, with_key,
};

e2e_test!(bootstrap_prints_only_the_key, |app| {
    let output = run_keyward(&[
        "bootstrap",
        "--database-url",
        &app.database_url,
        "--organization",
        "initech",
        "--name",
        "ops",
    ]);
    assert!(
        output.status.success(),
        "bootstrap fails: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    let key = lines[0];
    record_secret(key);
    let parsed = ApiKeySecret::parse(key).expect("a well-formed key");
    assert_eq!(parsed.kind(), keyward_core::KeyKind::Admin);
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains(key),
        "the key is not on stderr"
    );

    // The key manages initech, and only initech.
    let page = app
        .admin()
        .list_keys(with_key(key, pb::ListKeysRequest::default()))
        .await
        .expect("the bootstrapped key works on the admin API")
        .into_inner();
    assert_eq!(page.keys.len(), 1);
    assert_eq!(page.keys[0].organization_id, "initech");
    assert_eq!(page.keys[0].name, "ops");

    let refused = run_keyward(&[
        "bootstrap",
        "--database-url",
        &app.database_url,
        "--organization",
        "bad org!",
    ]);
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--organization"));
});

async fn tamper(app: &TestApp, sql: &str) {
    let db = app.store.connection();
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .expect("the tampering statement runs");
}

e2e_test!(audit_verify_reports_a_tampered_event, |app| {
    let id = app.create_key("audited").await.id;
    app.archive(&id).await;
    app.reactivate(&id).await;

    let clean = run_keyward(&["audit", "verify", "--database-url", &app.database_url]);
    assert!(
        clean.status.success(),
        "a clean log verifies: {}",
        String::from_utf8_lossy(&clean.stdout)
    );
    assert!(String::from_utf8_lossy(&clean.stdout).contains("audit log intact"));

    let events = app.list_events(&app.acme_key, &id).await;
    let archived = events
        .iter()
        .find(|e| e.r#type() == pb::KeyEventType::Archived)
        .expect("the archive event");
    // Someone rewrites history: the archive was "done" by another actor.
    tamper(
        app,
        &format!(
            "UPDATE key_events SET actor_id = 'key_01JC3Y4M9ZQ8W6D4T2B1N0XK7P' WHERE seq = {}",
            archived.seq
        ),
    )
    .await;

    let broken = run_keyward(&["audit", "verify", "--database-url", &app.database_url]);
    assert_eq!(
        broken.status.code(),
        Some(1),
        "a tampered log fails verification with exit code 1: {}",
        String::from_utf8_lossy(&broken.stderr)
    );
    let report = String::from_utf8_lossy(&broken.stdout);
    assert!(
        report.contains(&format!(
            "organization acme: chain broken at event seq {}",
            archived.seq
        )),
        "the report names the first broken link: {report}"
    );
    assert!(
        !report.contains("organization globex"),
        "other organizations are intact: {report}"
    );
});

/// `keyward serve` with no flags starts on the embedded SQLite default in its
/// working directory, and `bootstrap` with no --database-url uses the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_on_the_embedded_default() {
    let dir = std::env::temp_dir().join(format!("keyward-serve-{}", keyward_core::new_ulid()));
    std::fs::create_dir_all(&dir).expect("a temp dir");

    let bootstrap = output_logged(
        keyward_command()
            .args(["bootstrap", "--organization", "demo"])
            .current_dir(&dir),
    );
    assert!(
        bootstrap.status.success(),
        "{}",
        String::from_utf8_lossy(&bootstrap.stderr)
    );
    let key = String::from_utf8(bootstrap.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned();
    record_secret(&key);
    assert!(
        dir.join("keyward.db").exists(),
        "the default database file is created"
    );

    let mut server = KeywardProcess::serve_in("embedded", &[], Some(&dir));
    let channel = server.wait_until_serving(&key).await;
    let page = KeyAdminServiceClient::new(channel)
        .list_keys(with_key(&key, pb::ListKeysRequest::default()))
        .await
        .expect("the server answers with the bootstrapped key");
    assert_eq!(page.into_inner().keys[0].organization_id, "demo");

    // SIGTERM stops it gracefully.
    let status = server.terminate();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    std::fs::remove_dir_all(&dir).ok();
}

// README: last-used data still pending when keyward is told to stop is
// written before it exits.
e2e_test!(sigterm_flushes_pending_last_used_data, |app| {
    let created = app.create_key("used once").await;
    let mut server = KeywardProcess::serve(
        "sigterm",
        &[
            "--database-url",
            &app.database_url,
            // No flush would come for an hour: only the shutdown flush can write.
            "--usage-flush-interval",
            "60m",
        ],
    );
    let channel = server.wait_until_serving(&app.acme_key).await;
    let mut validation = KeyValidationServiceClient::new(channel);
    assert_eq!(
        try_validate(&mut validation, &created.secret, &[]).await,
        Ok(pb::ValidationCode::Valid)
    );
    assert!(
        app.get_key(&created.id).await.last_used_at.is_none(),
        "nothing was flushed before the signal"
    );

    let status = server.terminate();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    let used = app.get_key(&created.id).await;
    assert!(
        used.last_used_at.is_some(),
        "the validation before SIGTERM is recorded: {used:?}"
    );
    assert_eq!(used.last_used_ip, CLIENT_IP);
    assert_eq!(used.last_used_user_agent, USER_AGENT);
});

/// README's first command: `bash scripts/quickstart.sh` bootstraps an admin key
/// on the embedded default, prints it, and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_hands_out_an_admin_key_and_serves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("keyward-quickstart-{}", keyward_core::new_ulid()));
    std::fs::create_dir_all(dir.join("scripts")).expect("a temp dir");
    std::fs::copy(
        root.join("scripts/quickstart.sh"),
        dir.join("scripts/quickstart.sh"),
    )
    .expect("copy the script");
    let addr = free_addr();

    let mut child = Command::new("bash")
        .arg("scripts/quickstart.sh")
        .current_dir(&dir)
        .env("KEYWARD_BIN", env!("CARGO_BIN_EXE_keyward"))
        .env("KEYWARD_LISTEN", addr.to_string())
        .env_remove("KEYWARD_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(log_file("quickstart").0)
        .spawn()
        .expect("the quickstart starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let key = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                line.trim()
                    .starts_with("sk_admin_")
                    .then(|| line.trim().to_owned())
            })
    })
    .await
    .expect("the reader finishes")
    .expect("the quickstart prints an admin key");
    record_secret(&key);
    let answered = eventually(Duration::from_secs(30), || {
        let key = key.clone();
        async move {
            let mut client = pb::key_admin_service_client::KeyAdminServiceClient::connect(format!(
                "http://{addr}"
            ))
            .await
            .ok()?;
            client
                .list_keys(with_key(&key, pb::ListKeysRequest::default()))
                .await
                .ok()
        }
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        dir.join("keyward.db").exists(),
        "the embedded database is created"
    );
    std::fs::remove_dir_all(&dir).ok();
    let page = answered
        .expect("the server answers with the printed key")
        .into_inner();
    assert_eq!(page.keys[0].organization_id, "demo");
}
