//! Raw keys never reach the database or the logs: the in-process servers'
//! logs and those of every `keyward` process the tests started.

use keyward::pb;
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

use crate::e2e_test;
use crate::helpers::logs::process_logs;
use crate::helpers::process::KeywardProcess;
use crate::helpers::{
    TestApp, captured_logs, record_secret, recorded_secrets, try_validate, with_key,
};

/// Every value of every column of every table, as text.
async fn dump_database(app: &TestApp) -> Vec<String> {
    let db = app.store.connection();
    let backend = db.get_database_backend();
    let query = |sql: String| Statement::from_string(backend, sql);
    let tables_sql = match backend {
        DatabaseBackend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table'".to_owned(),
        DatabaseBackend::Postgres => {
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                .to_owned()
        }
        _ => "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
            .to_owned(),
    };
    let mut tables = Vec::new();
    for row in db
        .query_all_raw(query(tables_sql))
        .await
        .expect("tables are listed")
    {
        tables.push(row.try_get_by_index::<String>(0).expect("a table name"));
    }
    assert!(
        tables.iter().any(|t| t == "api_keys"),
        "found the tables: {tables:?}"
    );
    let mut values = Vec::new();
    for table in tables {
        let columns_sql = match backend {
            DatabaseBackend::Sqlite => format!("SELECT name FROM pragma_table_info('{table}')"),
            DatabaseBackend::Postgres => format!(
                "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '{table}'"
            ),
            _ => format!(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{table}'"
            ),
        };
        for row in db
            .query_all_raw(query(columns_sql))
            .await
            .expect("columns are listed")
        {
            let column: String = row.try_get_by_index(0).expect("a column name");
            let cast = match backend {
                DatabaseBackend::MySql => format!("SELECT CAST(`{column}` AS CHAR) FROM `{table}`"),
                _ => format!("SELECT CAST(\"{column}\" AS TEXT) FROM \"{table}\""),
            };
            for value in db
                .query_all_raw(query(cast))
                .await
                .expect("values are read")
            {
                if let Ok(Some(text)) = value.try_get_by_index::<Option<String>>(0) {
                    values.push(text);
                }
            }
        }
    }
    values
}

e2e_test!(raw_keys_are_never_stored_or_logged, |app| {
    let mut admin = app.admin();
    let created = app
        .create_key("secret keeper")
        .scopes(&["orders:read"])
        .await;
    let id = created.id.clone();
    let rotated = admin
        .rotate_key(app.acme(pb::RotateKeyRequest {
            id: id.clone(),
            grace_period: None,
        }))
        .await
        .expect("RotateKey succeeds")
        .into_inner();
    record_secret(&rotated.secret);
    // A `keyward serve` process on the same database, logging at debug level.
    let mut process = KeywardProcess::serve("secrets", &["--database-url", &app.database_url]);
    let channel = process.wait_until_serving(&app.acme_key).await;
    let mut through_process =
        pb::key_validation_service_client::KeyValidationServiceClient::new(channel);
    // Use the keys every way a client can: valid, wrong scope, as an admin credential.
    for key in [&created.secret, &rotated.secret] {
        for scopes in [&[][..], &["orders:write"][..]] {
            try_validate(&mut through_process, key, scopes)
                .await
                .expect("the process answers ValidateKey");
        }
        app.validation()
            .validate_key(pb::ValidateKeyRequest {
                key: key.clone(),
                required_scopes: vec!["orders:write".into()],
                ..Default::default()
            })
            .await
            .expect("ValidateKey answers");
        let denied = admin
            .list_keys(with_key(key, pb::ListKeysRequest::default()))
            .await
            .expect_err("a standard key is not an admin key");
        assert!(!denied.message().contains(key.as_str()));
    }
    app.archive(&id).await;
    // Stopped, so that its shutdown lines are in its log too.
    assert!(process.terminate().success());

    let secrets = recorded_secrets();
    assert!(secrets.len() >= 4);
    // A 20-character run from the middle of the body: the hint shows only the
    // first 12 and last 4 characters, so this never appears legitimately.
    let fragments: Vec<&str> = secrets
        .iter()
        .map(|s| &s[s.len() - 26..s.len() - 6])
        .collect();
    let values = dump_database(app).await;
    assert!(!values.is_empty());
    for value in &values {
        for (secret, fragment) in secrets.iter().zip(&fragments) {
            assert!(
                !value.contains(secret.as_str()),
                "a raw key is stored: {value}"
            );
            assert!(
                !value.contains(fragment),
                "part of a raw key is stored: {value}"
            );
        }
    }
    assert!(
        process_logs().contains("DEBUG"),
        "the spawned process's debug logs are read"
    );
    let logs = captured_logs();
    assert!(!logs.is_empty(), "logs were captured");
    for fragment in &fragments {
        assert!(!logs.contains(fragment), "a raw key was logged");
    }
});
