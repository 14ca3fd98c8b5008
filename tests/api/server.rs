//! What the server offers besides the keyward services: health, reflection
//! (v1 and v1alpha), and `x-request-id` on every response.

use keyward::pb;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::e2e_test;
use crate::helpers::TestApp;

async fn channel(app: &TestApp) -> Channel {
    Channel::from_shared(format!("http://{}", app.addr))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the server accepts connections")
}

macro_rules! list_services {
    ($module:ident, $channel:expr) => {{
        use tonic_reflection::pb::$module::ServerReflectionRequest;
        use tonic_reflection::pb::$module::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$module::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$module::server_reflection_response::MessageResponse;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection answers")
            .into_inner();
        let response = responses
            .next()
            .await
            .expect("one response")
            .expect("a successful response");
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => list
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>(),
            other => panic!("unexpected reflection response {other:?}"),
        }
    }};
}

e2e_test!(health_reflection_and_request_ids, |app| {
    let channel = channel(app).await;

    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "keyward.v1.KeyAdminService",
        "keyward.v1.KeyValidationService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    for services in [
        list_services!(v1, channel.clone()),
        list_services!(v1alpha, channel.clone()),
    ] {
        for expected in [
            "keyward.v1.KeyAdminService",
            "keyward.v1.KeyValidationService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} in {services:?}"
            );
        }
    }

    // x-request-id: echoed when sent, generated otherwise, on success and on errors.
    let mut request = app.acme(pb::ListKeysRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "trace-123".parse().expect("ASCII"));
    let response = app
        .admin()
        .list_keys(request)
        .await
        .expect("ListKeys succeeds");
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-123")
    );

    let response = app
        .validation()
        .validate_key(pb::ValidateKeyRequest {
            key: "nope".into(),
            ..Default::default()
        })
        .await
        .expect("ValidateKey answers");
    let generated = response
        .metadata()
        .get("x-request-id")
        .expect("an id is generated");
    assert_eq!(generated.len(), 26);

    let denied = app
        .admin()
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect_err("no key is refused");
    assert_eq!(denied.code(), Code::Unauthenticated);
    assert!(
        denied.metadata().get("x-request-id").is_some(),
        "denials carry an id too"
    );

    let mut request = app.acme(pb::GetKeyRequest { id: "bad".into() });
    request
        .metadata_mut()
        .insert("x-request-id", "trace-456".parse().expect("ASCII"));
    let invalid = app
        .admin()
        .get_key(request)
        .await
        .expect_err("a bad id is refused");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(
        invalid
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-456")
    );
});
