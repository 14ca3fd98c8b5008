//! ListKeys over more than 1,000 keys: every filter, walked forwards and
//! backwards, with no key missed or repeated.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt, stream};
use keyward::pb;

use crate::e2e_test;
use crate::helpers::{TestApp, eventually, record_secret};

const KEYS: usize = 1_100;

/// What the test knows of each key, to compute expected listings.
#[derive(Debug, Clone, Default)]
struct Model {
    workspace: Option<&'static str>,
    user: Option<&'static str>,
    service_account: Option<&'static str>,
    creator: String,
    status: Option<pb::KeyStatus>,
    used_early: bool,
    used_late: bool,
}

fn page_request(filter: &pb::ListKeysRequest, limit: i32) -> pb::ListKeysRequest {
    pb::ListKeysRequest {
        limit: Some(limit),
        ..filter.clone()
    }
}

async fn list(app: &TestApp, request: pb::ListKeysRequest) -> pb::ListKeysResponse {
    app.admin()
        .list_keys(app.acme(request))
        .await
        .expect("ListKeys succeeds")
        .into_inner()
}

/// Walks all pages forwards (after_id) and then backwards (before_id from the
/// oldest key), checking both against `expected` (newest first).
async fn walk(
    app: &TestApp,
    filter: pb::ListKeysRequest,
    limit: i32,
    expected: &[String],
    label: &str,
) {
    let mut forwards = Vec::new();
    let mut request = page_request(&filter, limit);
    loop {
        let page = list(app, request.clone()).await;
        assert!(page.keys.len() <= limit as usize, "{label}: page too long");
        assert_eq!(
            page.first_id,
            page.keys.first().map(|k| k.id.clone()).unwrap_or_default()
        );
        assert_eq!(
            page.last_id,
            page.keys.last().map(|k| k.id.clone()).unwrap_or_default()
        );
        forwards.extend(page.keys.iter().map(|k| k.id.clone()));
        if !page.has_more {
            break;
        }
        assert_eq!(
            page.keys.len(),
            limit as usize,
            "{label}: a short page claims more"
        );
        request.after_id = page.last_id;
    }
    assert_eq!(forwards.len(), expected.len(), "{label}: forward count");
    assert_eq!(forwards, expected, "{label}: forward walk");

    let Some(oldest) = expected.last() else {
        return;
    };
    let mut backwards: Vec<String> = Vec::new();
    let mut request = page_request(&filter, limit);
    request.before_id = oldest.clone();
    loop {
        let page = list(app, request.clone()).await;
        // Each page is newest first and holds the keys just newer than the cursor.
        let mut ids: Vec<String> = page.keys.iter().map(|k| k.id.clone()).collect();
        ids.extend(backwards);
        backwards = ids;
        if !page.has_more {
            break;
        }
        request.before_id = page.first_id;
    }
    assert_eq!(
        backwards,
        expected[..expected.len() - 1],
        "{label}: backward walk"
    );
}

e2e_test!(list_keys_walks_every_filter_both_ways, |app| {
    // A second admin key of acme, so created_by_id has two values.
    let second_admin = app.create_key("second admin").admin().await;
    let second_admin_id = second_admin.id.clone();
    let first_admin_id = {
        let page = list(app, pb::ListKeysRequest::default()).await;
        page.keys
            .iter()
            .find(|k| k.id != second_admin_id)
            .expect("the bootstrap admin key")
            .id
            .clone()
    };

    let created: Vec<(String, String, Model)> = stream::iter(0..KEYS)
        .map(|i| {
            let model = Model {
                workspace: [Some("wrk_a"), Some("wrk_b"), None][i % 3],
                user: (i % 5 == 0).then_some("user_5"),
                service_account: (i % 7 == 0).then_some("sa_7"),
                creator: if i % 2 == 0 {
                    first_admin_id.clone()
                } else {
                    second_admin_id.clone()
                },
                ..Model::default()
            };
            let admin_key = if i % 2 == 0 {
                app.acme_key.clone()
            } else {
                second_admin.secret.clone()
            };
            async move {
                let created = app
                    .create_key(&format!("key {i}"))
                    .workspace(model.workspace.unwrap_or_default())
                    .with(|request| {
                        request.user_id = model.user.unwrap_or_default().into();
                        request.service_account_id =
                            model.service_account.unwrap_or_default().into();
                    })
                    .by(&admin_key)
                    .send()
                    .await?;
                Ok::<_, tonic::Status>((created.id, created.secret, model))
            }
        })
        .buffered(4)
        .try_collect()
        .await
        .expect("1,100 keys are created");

    let mut models: BTreeMap<String, Model> = BTreeMap::new();
    let mut secrets: BTreeMap<String, String> = BTreeMap::new();
    for (id, secret, model) in created {
        models.insert(id.clone(), model);
        secrets.insert(id, secret);
    }
    // The admin keys themselves are listed too.
    for id in [&first_admin_id, &second_admin_id] {
        models.insert(
            id.clone(),
            Model {
                creator: String::new(),
                ..Model::default()
            },
        );
    }

    // Lifecycle changes on a spread of keys.
    let ids: Vec<String> = secrets.keys().cloned().collect();
    for (i, id) in ids.iter().enumerate() {
        let mut admin = app.admin();
        let status = if i % 17 == 0 {
            admin
                .revoke_key(app.acme(pb::RevokeKeyRequest { id: id.clone() }))
                .await
                .expect("revoke");
            pb::KeyStatus::Revoked
        } else if i % 11 == 0 {
            admin
                .archive_key(app.acme(pb::ArchiveKeyRequest { id: id.clone() }))
                .await
                .expect("archive");
            pb::KeyStatus::Archived
        } else if i % 13 == 0 {
            admin
                .update_key(app.acme(pb::UpdateKeyRequest {
                    id: id.clone(),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["status".into()],
                    }),
                    status: pb::KeyStatus::Inactive.into(),
                    ..Default::default()
                }))
                .await
                .expect("disable");
            pb::KeyStatus::Inactive
        } else if i % 19 == 0 {
            admin
                .rotate_key(app.acme(pb::RotateKeyRequest {
                    id: id.clone(),
                    grace_period: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 0,
                    }),
                }))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    record_secret(&r.secret);
                    r
                })
                .map(|r| {
                    let new_key = r.api_key.expect("the new key");
                    models.insert(
                        new_key.id.clone(),
                        Model {
                            creator: first_admin_id.clone(),
                            status: Some(pb::KeyStatus::Active),
                            ..models[id].clone()
                        },
                    );
                })
                .expect("rotate");
            pb::KeyStatus::Expired
        } else {
            pb::KeyStatus::Active
        };
        if let Some(model) = models.get_mut(id) {
            model.status = Some(status);
        }
    }
    for model in models.values_mut() {
        model.status.get_or_insert(pb::KeyStatus::Active);
    }

    // Usage: an early batch, a cut-off instant, a late batch.
    let use_keys = |filter: fn(usize) -> bool| {
        let ids = &ids;
        let secrets = &secrets;
        async move {
            for (_, id) in ids.iter().enumerate().filter(|(i, _)| filter(*i)) {
                app.validation()
                    .validate_key(pb::ValidateKeyRequest {
                        key: secrets[id].clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("ValidateKey answers");
            }
        }
    };
    let early = |i: usize| i % 4 == 1;
    let late = |i: usize| i % 4 == 3;
    use_keys(early).await;
    let flushed = |ids: Vec<String>| async move {
        eventually(Duration::from_secs(10), || {
            let ids = ids.clone();
            async move {
                for id in ids {
                    let key = app
                        .admin()
                        .get_key(app.acme(pb::GetKeyRequest { id }))
                        .await
                        .ok()?
                        .into_inner()
                        .api_key?;
                    key.last_used_at?;
                }
                Some(())
            }
        })
        .await
        .expect("usage is flushed")
    };
    let active = |id: &String| models[id].status == Some(pb::KeyStatus::Active);
    let early_used: Vec<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, id)| early(*i) && active(id))
        .map(|(_, id)| id.clone())
        .collect();
    flushed(early_used.clone()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    use_keys(late).await;
    let late_used: Vec<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, id)| late(*i) && active(id))
        .map(|(_, id)| id.clone())
        .collect();
    flushed(late_used.clone()).await;
    for id in &early_used {
        models.get_mut(id).expect("model").used_early = true;
    }
    for id in &late_used {
        models.get_mut(id).expect("model").used_late = true;
    }
    // The bootstrap admin key authenticates every admin call, so it was last
    // used after the cut-off; the second admin key was last used before it.

    let expect = |pred: &dyn Fn(&String, &Model) -> bool| -> Vec<String> {
        models
            .iter()
            .rev()
            .filter(|(id, m)| pred(id, m))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let not_archived = |m: &Model| m.status != Some(pb::KeyStatus::Archived);
    let base = pb::ListKeysRequest::default();
    let cases: Vec<(&str, pb::ListKeysRequest, Vec<String>)> = vec![
        (
            "default (archived hidden)",
            base.clone(),
            expect(&|_, m| not_archived(m)),
        ),
        (
            "include_archived",
            pb::ListKeysRequest {
                include_archived: true,
                ..base.clone()
            },
            expect(&|_, _| true),
        ),
        (
            "statuses active+inactive",
            pb::ListKeysRequest {
                statuses: vec![pb::KeyStatus::Active.into(), pb::KeyStatus::Inactive.into()],
                ..base.clone()
            },
            expect(&|_, m| {
                matches!(
                    m.status,
                    Some(pb::KeyStatus::Active | pb::KeyStatus::Inactive)
                )
            }),
        ),
        (
            "statuses archived",
            pb::ListKeysRequest {
                statuses: vec![pb::KeyStatus::Archived.into()],
                ..base.clone()
            },
            expect(&|_, m| m.status == Some(pb::KeyStatus::Archived)),
        ),
        (
            "statuses revoked+expired",
            pb::ListKeysRequest {
                statuses: vec![pb::KeyStatus::Revoked.into(), pb::KeyStatus::Expired.into()],
                ..base.clone()
            },
            expect(&|_, m| {
                matches!(
                    m.status,
                    Some(pb::KeyStatus::Revoked | pb::KeyStatus::Expired)
                )
            }),
        ),
        (
            "workspace_id",
            pb::ListKeysRequest {
                workspace_id: "wrk_b".into(),
                include_archived: true,
                ..base.clone()
            },
            expect(&|_, m| m.workspace == Some("wrk_b")),
        ),
        (
            "created_by_id",
            pb::ListKeysRequest {
                created_by_id: second_admin_id.clone(),
                ..base.clone()
            },
            expect(&|_, m| m.creator == second_admin_id && not_archived(m)),
        ),
        (
            "user_id",
            pb::ListKeysRequest {
                user_id: "user_5".into(),
                ..base.clone()
            },
            expect(&|_, m| m.user == Some("user_5") && not_archived(m)),
        ),
        (
            "service_account_id",
            pb::ListKeysRequest {
                service_account_id: "sa_7".into(),
                include_archived: true,
                ..base.clone()
            },
            expect(&|_, m| m.service_account == Some("sa_7")),
        ),
        (
            "last_used_before",
            pb::ListKeysRequest {
                last_used_before: Some(keyward::convert::timestamp(cutoff)),
                include_archived: true,
                ..base.clone()
            },
            expect(&|id, m| !m.used_late && *id != first_admin_id),
        ),
        (
            "workspace + user + status",
            pb::ListKeysRequest {
                workspace_id: "wrk_a".into(),
                user_id: "user_5".into(),
                statuses: vec![pb::KeyStatus::Active.into()],
                ..base.clone()
            },
            expect(&|_, m| {
                m.workspace == Some("wrk_a")
                    && m.user == Some("user_5")
                    && m.status == Some(pb::KeyStatus::Active)
            }),
        ),
    ];
    for (label, filter, expected) in cases {
        assert!(
            !expected.is_empty(),
            "{label}: the data set covers this filter"
        );
        walk(app, filter, 97, &expected, label).await;
    }
    // Over 1,000 keys with the largest page, and the smallest.
    let everything = expect(&|_, _| true);
    assert!(everything.len() > 1_000);
    walk(
        app,
        pb::ListKeysRequest {
            include_archived: true,
            ..base.clone()
        },
        1000,
        &everything,
        "limit 1000",
    )
    .await;
    let first = list(
        app,
        pb::ListKeysRequest {
            limit: Some(1),
            include_archived: true,
            ..base.clone()
        },
    )
    .await;
    assert_eq!(first.keys.len(), 1);
    assert!(first.has_more);
    assert_eq!(first.first_id, everything[0]);
    let default_page = list(app, base.clone()).await;
    assert_eq!(default_page.keys.len(), 20, "the default page size is 20");
});
