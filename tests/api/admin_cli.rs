//! The admin CLI (`keyward keys …`, `keyward events list`): the built binary
//! against a port-0 server. Every subcommand, its exit code, `--output json`
//! parsed with serde_json, `--all` across pages, errors with their gRPC code
//! and field violations, and the admin key never printed (the harness
//! checks that on every run), and README's own CLI commands. The CLI is a
//! gRPC client, so one backend is enough: the API tests cover the others.

use keyward::pb;
use keyward_core::{ApiKeySecret, Environment, KeyKind};
use keyward_store::testing::Backend;
use serde_json::Value;

use crate::e2e_test;
use crate::helpers::certs::{TestPki, display};
use crate::helpers::process::{AdminCli, free_addr};
use crate::helpers::{CLIENT_IP, TestApp, readme, unknown_key, with_tls_app};

/// The exit codes README's "Admin CLI" section documents.
mod exit {
    pub const USAGE: i32 = 2;
    pub const CONFIG: i32 = 3;
    pub const UNAVAILABLE: i32 = 4;
    pub const UNAUTHENTICATED: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 6;
    pub const NOT_FOUND: i32 = 7;
    pub const INVALID_ARGUMENT: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
}

/// `keyward ARGS --output json`: the parsed document.
async fn json(app: &TestApp, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    app.cli(&args).await.json()
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
}

e2e_test!(every_key_subcommand_works, backends = [sqlite], |app| {
    // create: every flag reaches the key; the raw key is a field.
    let created = json(
        app,
        &[
            "keys",
            "create",
            "--name",
            "orders service",
            "--scope",
            "orders:read",
            "--scope",
            "orders:write",
            "--description",
            "the orders API",
            "--metadata",
            "team=payments",
            "--metadata",
            "tier=gold",
            "--expires-in",
            "30d",
            "--environment",
            "test",
        ],
    )
    .await;
    let secret = text(&created["secret"]).to_owned();
    assert!(secret.starts_with("sk_test_"), "{created}");
    let key = &created["api_key"];
    let id = text(&key["id"]).to_owned();
    assert_eq!(key["name"], "orders service");
    assert_eq!(
        key["scopes"],
        serde_json::json!(["orders:read", "orders:write"])
    );
    assert_eq!(key["metadata"]["team"], "payments");
    assert_eq!(key["metadata"]["tier"], "gold");
    assert_eq!(key["description"], "the orders API");
    assert_eq!(key["environment"], "test");
    assert_eq!(key["status"], "active");
    let expires = chrono::DateTime::parse_from_rfc3339(text(&key["expires_at"]))
        .expect("expires_at is RFC 3339");
    let in_30_days = chrono::Utc::now() + chrono::Duration::days(30);
    assert!(
        (in_30_days - expires.to_utc()).num_minutes().abs() < 5,
        "{expires}"
    );
    assert!(text(&key["prefix"]).starts_with("sk_test_"), "{created}");
    assert_eq!(
        app.validate(&secret, &["orders:read"]).await.code(),
        pb::ValidationCode::Valid
    );

    // The table marks the raw key and puts it on a line of its own.
    let table = app.cli(&["keys", "create", "--name", "table key"]).await;
    let stdout = table.success();
    assert!(stdout.contains("RAW KEY (shown only this once"), "{stdout}");
    let raw = stdout
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("sk_live_"))
        .expect("the raw key on a line of its own");
    ApiKeySecret::parse(raw).expect("a well-formed key");

    // get, as JSON and as a table.
    let got = json(app, &["keys", "get", &id]).await;
    // The same key, but for last-used data (the validation above may have
    // been flushed meanwhile).
    let without_usage = |key: &Value| {
        let mut key = key.clone();
        let fields = key.as_object_mut().expect("a key is an object");
        for usage in ["last_used_at", "last_used_ip", "last_used_user_agent"] {
            assert!(fields.remove(usage).is_some(), "{usage} is always present");
        }
        key
    };
    assert_eq!(without_usage(&got["api_key"]), without_usage(key));
    let shown = app.cli(&["keys", "get", &id]).await;
    assert!(shown.success().contains("orders service"), "{shown:?}");
    assert!(
        !shown.stdout.contains(&secret),
        "get never shows the raw key"
    );

    // list, and its filters.
    let listed = json(app, &["keys", "list"]).await;
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id),
        "{listed}"
    );
    let owned = json(
        app,
        &[
            "keys",
            "create",
            "--name",
            "owned",
            "--user-id",
            "user:42",
            "--workspace-id",
            "eu",
        ],
    )
    .await;
    let owned_id = text(&owned["api_key"]["id"]).to_owned();
    for filter in [&["--user-id", "user:42"][..], &["--workspace-id", "eu"]] {
        let mut args = vec!["keys", "list"];
        args.extend(filter);
        let filtered = json(app, &args).await;
        let ids: Vec<&str> = filtered["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| text(&k["id"]))
            .collect();
        assert_eq!(ids, [owned_id.as_str()], "{filter:?}");
    }
    let stale = json(
        app,
        &["keys", "list", "--last-used-before", "2000-01-01T00:00:00Z"],
    )
    .await;
    assert!(
        stale["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == owned_id),
        "a key never used is stale: {stale}"
    );

    // update: the mask is the flags given; clearing is explicit.
    let updated = json(
        app,
        &[
            "keys",
            "update",
            &id,
            "--name",
            "orders (renamed)",
            "--scope",
            "orders:read",
            "--clear-expiry",
            "--status",
            "inactive",
        ],
    )
    .await;
    let updated = &updated["api_key"];
    assert_eq!(updated["name"], "orders (renamed)");
    assert_eq!(updated["scopes"], serde_json::json!(["orders:read"]));
    assert_eq!(updated["expires_at"], Value::Null);
    assert_eq!(updated["status"], "inactive");
    assert_eq!(updated["description"], "the orders API", "not in the mask");
    assert_eq!(updated["metadata"]["team"], "payments", "not in the mask");
    let cleared = json(
        app,
        &[
            "keys",
            "update",
            &id,
            "--clear-metadata",
            "--description",
            "",
            "--status",
            "active",
        ],
    )
    .await;
    assert_eq!(cleared["api_key"]["metadata"], serde_json::json!({}));
    assert_eq!(cleared["api_key"]["description"], "");
    assert_eq!(cleared["api_key"]["status"], "active");
    assert_eq!(app.get_key(&id).await.name, "orders (renamed)");

    // An IP allowlist: set (canonical form back), enforced, then lifted.
    let fenced = json(
        app,
        &[
            "keys",
            "update",
            &id,
            "--allowed-cidr",
            "192.0.2.0/24",
            "--allowed-cidr",
            "2001:db8::1",
        ],
    )
    .await;
    assert_eq!(
        fenced["api_key"]["allowed_cidrs"],
        serde_json::json!(["192.0.2.0/24", "2001:db8::1/128"])
    );
    assert_eq!(
        app.validate(&secret, &[]).await.code(),
        pb::ValidationCode::IpNotAllowed,
        "{CLIENT_IP} is outside the list"
    );
    let open = json(app, &["keys", "update", &id, "--clear-allowed-cidrs"]).await;
    assert_eq!(open["api_key"]["allowed_cidrs"], serde_json::json!([]));
    assert!(app.validate(&secret, &[]).await.valid);

    // archive and reactivate.
    let archived = json(app, &["keys", "archive", &id]).await;
    assert_eq!(archived["api_key"]["status"], "archived");
    assert!(archived["api_key"]["archived_at"].is_string());
    assert_eq!(
        app.validate(&secret, &[]).await.code(),
        pb::ValidationCode::Archived
    );
    let hidden = json(app, &["keys", "list"]).await;
    assert!(
        !hidden["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id)
    );
    let shown = json(app, &["keys", "list", "--status", "archived"]).await;
    assert_eq!(shown["keys"].as_array().unwrap().len(), 1, "{shown}");
    let reactivated = json(app, &["keys", "reactivate", &id]).await;
    assert_eq!(reactivated["api_key"]["status"], "active");

    // rotate: a new raw key, the old key expiring now.
    let rotated = json(app, &["keys", "rotate", &id, "--grace-period", "0"]).await;
    let new_secret = text(&rotated["secret"]).to_owned();
    let new_id = text(&rotated["api_key"]["id"]).to_owned();
    assert_eq!(rotated["api_key"]["rotated_from_id"], id.as_str());
    assert_eq!(rotated["previous_key"]["id"], id.as_str());
    assert_eq!(rotated["api_key"]["name"], "orders (renamed)");
    assert_eq!(
        app.validate(&new_secret, &["orders:read"]).await.code(),
        pb::ValidationCode::Valid
    );
    assert_ne!(
        app.validate(&secret, &[]).await.code(),
        pb::ValidationCode::Valid,
        "the old key ends with a zero grace period"
    );
    let table = app
        .cli(&["keys", "rotate", &new_id, "--grace-period", "1h"])
        .await;
    assert!(
        table.success().contains("RAW KEY (shown only this once"),
        "{table:?}"
    );
    assert!(
        table
            .stdout
            .contains(&format!("previous key {new_id} now expires at"))
    );

    // revoke: permanent, so a later update is FAILED_PRECONDITION.
    let revoked = json(app, &["keys", "revoke", &new_id]).await;
    assert_eq!(revoked["api_key"]["status"], "revoked");
    let refused = app
        .cli(&["keys", "update", &new_id, "--name", "again"])
        .await;
    let stderr = refused.failure(exit::FAILED_PRECONDITION);
    assert!(
        stderr.starts_with("error: FAILED_PRECONDITION: "),
        "{stderr}"
    );

    // delete, then the key is gone.
    let deleted = json(app, &["keys", "delete", &id]).await;
    assert_eq!(deleted, serde_json::json!({ "id": id, "deleted": true }));
    let gone = app.cli(&["keys", "delete", &new_id]).await;
    assert!(
        gone.success().contains(&format!("deleted {new_id}")),
        "{gone:?}"
    );
    let missing = app.cli(&["keys", "get", &id]).await;
    assert!(
        missing
            .failure(exit::NOT_FOUND)
            .starts_with("error: NOT_FOUND: key not found")
    );

    // The audit log of the deleted key tells its story.
    let events = json(app, &["events", "list", "--key-id", &id]).await;
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| text(&event["type"]))
        .collect();
    assert_eq!(
        types,
        [
            "deleted",
            "rotated",
            "reactivated",
            "archived",
            "updated",
            "updated",
            "updated",
            "updated",
            "created"
        ]
    );
    let first_update = &events["events"][7];
    assert_eq!(first_update["changes"]["name"], "orders (renamed)");
    assert_eq!(first_update["actor"]["type"], "api_key");
    let table = app.cli(&["events", "list", "--key-id", &id]).await;
    let lines: Vec<&str> = table.success().lines().collect();
    assert!(lines[0].starts_with("SEQ"), "{lines:?}");
    assert_eq!(lines.len(), 1 + 9, "a header and one row per event");
});

e2e_test!(all_follows_the_cursors, backends = [sqlite], |app| {
    for i in 0..5 {
        app.create_key(&format!("paged {i}")).await;
    }
    let every_key: Vec<String> = app
        .list_keys(&app.acme_key)
        .await
        .into_iter()
        .map(|key| key.id)
        .collect();
    assert_eq!(every_key.len(), 6, "5 keys and the admin key");

    let ids = |page: &Value| -> Vec<String> {
        page["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| text(&key["id"]).to_owned())
            .collect()
    };
    let first = json(app, &["keys", "list", "--limit", "2"]).await;
    assert_eq!(ids(&first), every_key[..2]);
    assert_eq!(first["has_more"], true);
    let next = json(
        app,
        &[
            "keys",
            "list",
            "--limit",
            "2",
            "--after",
            text(&first["last_id"]),
        ],
    )
    .await;
    assert_eq!(ids(&next), every_key[2..4]);

    let all = json(app, &["keys", "list", "--limit", "2", "--all"]).await;
    assert_eq!(ids(&all), every_key, "every page, newest first");
    assert_eq!(all["has_more"], false);
    assert_eq!(ids(&json(app, &["keys", "list", "--all"]).await), every_key);

    let table = app.cli(&["keys", "list", "--limit", "2"]).await;
    let text_out = table.success();
    assert_eq!(text_out.lines().count(), 1 + 2 + 1, "{text_out}");
    assert!(text_out.contains("--all lists them all"), "{text_out}");

    let seqs = |page: &Value| -> Vec<i64> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["seq"].as_i64().expect("a seq"))
            .collect()
    };
    let every_event: Vec<i64> = app
        .list_events(&app.acme_key, "")
        .await
        .iter()
        .map(|event| event.seq)
        .collect();
    let events = json(app, &["events", "list", "--limit", "2", "--all"]).await;
    assert_eq!(seqs(&events), every_event);
    let page = json(app, &["events", "list", "--limit", "2"]).await;
    assert_eq!(seqs(&page), every_event[..2]);
    assert_eq!(page["has_more"], true);
    let after = page["last_seq"].to_string();
    let next = json(app, &["events", "list", "--limit", "2", "--after", &after]).await;
    assert_eq!(seqs(&next), every_event[2..4]);
});

e2e_test!(
    errors_print_the_grpc_code_and_exit_non_zero,
    backends = [sqlite],
    |app| {
        let missing = app
            .cli(&["keys", "get", "key_01JC3Y4M9ZQ8W6D4T2B1N0XK7P"])
            .await;
        let stderr = missing.failure(exit::NOT_FOUND);
        assert!(
            stderr.starts_with("error: NOT_FOUND: key not found"),
            "{stderr}"
        );
        assert!(stderr.contains("request id: "), "{stderr}");

        // Every field violation is listed under the code.
        let bad = app
            .cli(&["keys", "create", "--name", " ", "--scope", "Not A Scope"])
            .await;
        let stderr = bad.failure(exit::INVALID_ARGUMENT);
        assert!(stderr.starts_with("error: INVALID_ARGUMENT: "), "{stderr}");
        assert!(stderr.contains("\n  name: "), "{stderr}");
        assert!(stderr.contains("\n  scopes[0]: "), "{stderr}");
        let bad_id = app.cli(&["keys", "archive", "not-an-id"]).await;
        assert!(bad_id.failure(exit::INVALID_ARGUMENT).contains("\n  id: "));
        let too_long = app
            .cli(&[
                "keys",
                "rotate",
                "key_01JC3Y4M9ZQ8W6D4T2B1N0XK7P",
                "--grace-period",
                "400d",
            ])
            .await;
        assert!(
            too_long
                .failure(exit::INVALID_ARGUMENT)
                .contains("grace_period")
        );

        // Another organization's key is NOT_FOUND.
        let acme_key = app.create_key("acme only").await.id;
        let foreign = app
            .admin_cli()
            .admin_key(&app.globex_key)
            .run(&["keys", "get", &acme_key])
            .await;
        foreign.failure(exit::NOT_FOUND);

        // Credentials.
        let unknown = ApiKeySecret::generate(KeyKind::Admin, Environment::Live);
        let stranger = app
            .admin_cli()
            .admin_key(unknown.expose())
            .run(&["keys", "list"])
            .await;
        assert!(
            stranger
                .failure(exit::UNAUTHENTICATED)
                .starts_with("error: UNAUTHENTICATED: ")
        );
        let standard = app
            .admin_cli()
            .admin_key(&app.create_key("not an admin").await.secret)
            .run(&["keys", "list"])
            .await;
        assert!(
            standard
                .failure(exit::PERMISSION_DENIED)
                .starts_with("error: PERMISSION_DENIED: ")
        );
        let none = app.admin_cli().run(&["keys", "list"]).await;
        assert!(none.failure(exit::CONFIG).contains("KEYWARD_ADMIN_KEY"));
        // The last character changed (to one it is not): a checksum mismatch.
        let (body, last) = app.acme_key.split_at(app.acme_key.len() - 1);
        let typo = format!("{body}{}", if last == "x" { 'y' } else { 'x' });
        let mistyped = app
            .admin_cli()
            .admin_key(&typo)
            .run(&["keys", "list"])
            .await;
        assert!(mistyped.failure(exit::CONFIG).contains("checksum"));

        // No server.
        let nobody = AdminCli::new(&format!("http://{}", free_addr()))
            .admin_key(&app.acme_key)
            .run(&["events", "list"])
            .await;
        assert!(
            nobody
                .failure(exit::UNAVAILABLE)
                .contains("cannot connect to http://")
        );

        // TLS options for a plaintext URL are refused, not ignored.
        let plaintext = app
            .cli(&["keys", "list", "--ca-cert", "/nonexistent/ca.pem"])
            .await;
        assert!(plaintext.failure(exit::CONFIG).contains("https://"));
        let https = app
            .admin_cli()
            .admin_key(&app.acme_key)
            .env("KEYWARD_SERVER", &format!("https://{}", app.addr))
            .run(&["keys", "list", "--ca-cert", "/nonexistent/ca.pem"])
            .await;
        assert!(https.failure(exit::CONFIG).contains("/nonexistent/ca.pem"));

        // Usage errors never reach the server.
        for usage in [
            &["keys", "update", "key_01JC3Y4M9ZQ8W6D4T2B1N0XK7P"][..],
            &[
                "keys",
                "create",
                "--name",
                "x",
                "--expires-in",
                "1d",
                "--expires-at",
                "2030-01-01T00:00:00Z",
            ],
            &[
                "keys",
                "create",
                "--name",
                "x",
                "--metadata",
                "a=1",
                "--metadata",
                "a=2",
            ],
            &["keys", "list", "--status", "gone"],
            &["keys", "list", "--admin-key", "anything"],
        ] {
            let run = app.cli(usage).await;
            assert_eq!(run.code, exit::USAGE, "{usage:?}: {run:?}");
            assert!(run.stdout.is_empty(), "{usage:?}");
        }
    }
);

e2e_test!(
    the_admin_key_comes_from_a_file,
    backends = [sqlite],
    |app| {
        use std::os::unix::fs::PermissionsExt;

        let dir = std::env::temp_dir().join(format!("keyward-cli-{}", keyward_core::new_ulid()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let path = dir.join("admin.key");
        std::fs::write(&path, format!("{}\n", app.acme_key)).expect("the key file is written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");

        let listed = app
            .admin_cli()
            .admin_key_file(&path, &app.acme_key)
            .run(&["keys", "list", "--output", "json"])
            .await;
        assert!(listed.json()["keys"].is_array());
        assert!(listed.stderr.is_empty(), "{listed:?}");

        // The file wins over the environment.
        let both = app
            .admin_cli()
            .admin_key(&app.globex_key)
            .admin_key_file(&path, &app.acme_key)
            .run(&["keys", "list", "--output", "json"])
            .await;
        assert_eq!(both.json()["keys"][0]["organization_id"], "acme");

        // Readable by everyone: used, with a warning.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let open = app
            .admin_cli()
            .admin_key_file(&path, &app.acme_key)
            .run(&["events", "list"])
            .await;
        open.success();
        assert!(open.stderr.contains("warning: ") && open.stderr.contains("chmod 600"));

        let missing = dir.join("missing.key");
        let run = app
            .admin_cli()
            .admin_key_file(&missing, &app.acme_key)
            .run(&["keys", "list"])
            .await;
        assert!(run.failure(exit::CONFIG).contains("missing.key"));
        std::fs::remove_dir_all(&dir).ok();

        // A standard key is a well-formed key: only keyward can refuse it.
        let standard = unknown_key();
        let refused = app
            .admin_cli()
            .admin_key(&standard)
            .run(&["keys", "list"])
            .await;
        refused.failure(exit::UNAUTHENTICATED);
    }
);

e2e_test!(
    rate_limits_and_credits_from_the_command_line,
    backends = [sqlite],
    |app| {
        let created = json(
            app,
            &[
                "keys",
                "create",
                "--name",
                "metered",
                "--rate-limit",
                "requests=100/1s",
                "--rate-limit",
                "bulk=1000/10s:5",
                "--credits",
                "500",
                "--credits-refill",
                "1000/monthly",
            ],
        )
        .await;
        let key = &created["api_key"];
        let id = text(&key["id"]).to_owned();
        crate::helpers::record_secret(text(&created["secret"]));
        assert_eq!(
            key["rate_limits"],
            serde_json::json!([
                {"name": "bulk", "limit": 1000, "duration": "10s", "cost": 5},
                {"name": "requests", "limit": 100, "duration": "1s", "cost": 1},
            ])
        );
        assert_eq!(key["credits"]["remaining"], 500);
        assert_eq!(key["credits"]["refill_amount"], 1000);
        assert_eq!(key["credits"]["refill_interval"], "monthly");
        assert!(key["credits"]["refills_at"].is_string(), "{key}");
        let got = app.get_key(&id).await;
        assert_eq!(got.rate_limits.len(), 2);
        assert_eq!(got.credits.map(|c| c.remaining), Some(500));

        // The table shows them as the flags take them.
        let table = app.cli(&["keys", "get", &id]).await;
        let table = table.success();
        assert!(
            table.contains("bulk=1000/10s:5, requests=100/1s"),
            "{table}"
        );
        assert!(
            table.contains("500 left, refilled to 1000 monthly (next "),
            "{table}"
        );

        // Update replaces the limits and removes the credits; the audit log
        // has both sides.
        let updated = json(
            app,
            &[
                "keys",
                "update",
                &id,
                "--rate-limit",
                "hourly=5000/1h",
                "--clear-credits",
            ],
        )
        .await;
        assert_eq!(
            updated["api_key"]["rate_limits"],
            serde_json::json!([{"name": "hourly", "limit": 5000, "duration": "3600s", "cost": 1}])
        );
        assert_eq!(updated["api_key"]["credits"], Value::Null);
        let events = json(app, &["events", "list", "--key-id", &id]).await;
        let changes = &events["events"][0]["changes"];
        assert_eq!(changes["rate_limits"][0]["window_s"], 3600);
        assert_eq!(changes["previous_rate_limits"][0]["name"], "bulk");
        assert_eq!(changes["credits"], Value::Null);
        assert_eq!(changes["previous_credits"]["remaining"], 500);
        let topped = json(
            app,
            &[
                "keys",
                "update",
                &id,
                "--credits",
                "7",
                "--clear-rate-limits",
            ],
        )
        .await;
        assert_eq!(topped["api_key"]["rate_limits"], serde_json::json!([]));
        assert_eq!(topped["api_key"]["credits"]["remaining"], 7);
        assert_eq!(topped["api_key"]["credits"]["refill_interval"], Value::Null);

        // keyward checks the values and names the bad one; the shape is
        // checked before any call.
        let bad = app
            .cli(&[
                "keys",
                "update",
                &id,
                "--rate-limit",
                "requests=0/1s",
                "--credits=-1",
            ])
            .await;
        let stderr = bad.failure(exit::INVALID_ARGUMENT);
        assert!(stderr.contains("\n  rate_limits[0].limit: "), "{stderr}");
        assert!(stderr.contains("\n  credits.remaining: "), "{stderr}");
        for shape in [
            &["--rate-limit", "requests"][..],
            &["--rate-limit", "requests=100/1w"],
            &["--credits-refill", "100/daily"],
            &["--credits", "5", "--credits-refill", "100/hourly"],
            &["--credits", "5", "--clear-credits"],
        ] {
            let mut args = vec!["keys", "update", id.as_str()];
            args.extend_from_slice(shape);
            app.cli(&args).await.failure(exit::USAGE);
        }
        assert_eq!(app.get_key(&id).await.credits.map(|c| c.remaining), Some(7));

        // README's commands: create, then update the key created.
        let commands = readme::commands("### Rate limits and credits", "keyward");
        let [create, update] = <[Vec<String>; 2]>::try_from(commands).expect("create and update");
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        let created = json(app, &create).await;
        crate::helpers::record_secret(text(&created["secret"]));
        let id = text(&created["api_key"]["id"]).to_owned();
        assert_eq!(
            created["api_key"]["rate_limits"].as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(created["api_key"]["credits"]["refill_interval"], "monthly");
        let update: Vec<String> = update.iter().map(|arg| arg.replace("key_…", &id)).collect();
        let update: Vec<&str> = update.iter().map(String::as_str).collect();
        let updated = json(app, &update).await;
        assert_eq!(updated["api_key"]["rate_limits"][0]["limit"], 10);
        assert_eq!(updated["api_key"]["credits"]["remaining"], 500);
    }
);

e2e_test!(the_readme_commands_work, backends = [sqlite], |app| {
    let commands = readme::commands("## Using it with the CLI", "keyward");
    let mut id: Option<String> = None;
    let mut shown = std::collections::BTreeSet::new();
    for command in commands {
        let mut args: Vec<String> = command
            .iter()
            .map(|arg| match &id {
                Some(id) => arg.replace("key_…", id),
                None => arg.clone(),
            })
            .collect();
        shown.insert(args[..2].join(" "));
        if args[..2] == ["keys", "create"] && id.is_none() {
            // The key the other commands act on: its id from the JSON answer.
            args.extend(["--output".into(), "json".into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert!(!args.contains(&"key_…"), "a key is created first: {args:?}");
        let run = app.cli(&args).await;
        if args.contains(&"json") {
            let answer = run.json();
            if let Some(created) = answer["api_key"]["id"].as_str() {
                id.get_or_insert_with(|| created.to_owned());
            }
        } else {
            run.success();
        }
    }
    for subcommand in [
        "keys create",
        "keys get",
        "keys list",
        "keys update",
        "keys archive",
        "keys reactivate",
        "keys revoke",
        "keys rotate",
        "keys delete",
        "events list",
    ] {
        assert!(
            shown.contains(subcommand),
            "README shows `keyward {subcommand}`: {shown:?}"
        );
    }
});

/// `--ca-cert`, `--client-cert` and `--client-key` (or their `KEYWARD_*`
/// variables) reach a keyward that requires client certificates; without a
/// certificate of its CA, or trusting another CA, there is no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_mtls() {
    let pki = TestPki::new();
    let [ca, cert, key, other_ca] = ["ca.pem", "client.pem", "client-key.pem", "other-ca.pem"]
        .map(|name| display(&pki.path(name)));
    with_tls_app(
        Backend::Sqlite,
        |settings| pki.serve_tls(settings, true),
        pki.client(),
        async |app| {
            assert!(app.url.starts_with("https://"), "{}", app.url);
            let created = app
                .cli(&[
                    "keys",
                    "create",
                    "--name",
                    "over mtls",
                    "--ca-cert",
                    &ca,
                    "--client-cert",
                    &cert,
                    "--client-key",
                    &key,
                    "--output",
                    "json",
                ])
                .await
                .json();
            let id = text(&created["api_key"]["id"]);
            assert_eq!(app.get_key(id).await.name, "over mtls");

            let listed = app
                .admin_cli()
                .admin_key(&app.acme_key)
                .env("KEYWARD_CA_CERT", &ca)
                .env("KEYWARD_CLIENT_CERT", &cert)
                .env("KEYWARD_CLIENT_KEY", &key)
                .run(&["events", "list", "--output", "json"])
                .await
                .json();
            assert_eq!(listed["events"][0]["key_id"], id);

            let without_certificate = app.cli(&["keys", "list", "--ca-cert", &ca]).await;
            let stderr = without_certificate.failure(exit::UNAVAILABLE);
            assert!(
                stderr.starts_with("error: the connection to keyward failed: "),
                "{stderr}"
            );
            assert!(stderr.contains("hint: "), "{stderr}");
            let wrong_ca = app
                .cli(&[
                    "keys",
                    "list",
                    "--ca-cert",
                    &other_ca,
                    "--client-cert",
                    &cert,
                    "--client-key",
                    &key,
                ])
                .await;
            assert!(
                wrong_ca
                    .failure(exit::UNAVAILABLE)
                    .starts_with("error: cannot connect to https://"),
                "{wrong_ca:?}"
            );
            let half = app
                .cli(&["keys", "list", "--ca-cert", &ca, "--client-cert", &cert])
                .await;
            assert!(half.failure(exit::CONFIG).contains("give both or neither"));
            let plaintext = app
                .admin_cli()
                .admin_key(&app.acme_key)
                .env("KEYWARD_SERVER", &app.url.replace("https://", "http://"))
                .run(&["keys", "list"])
                .await;
            plaintext.failure(exit::UNAVAILABLE);
        },
    )
    .await;
}
