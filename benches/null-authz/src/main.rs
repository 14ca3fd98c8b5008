//! The null authorization server of `scripts/bench-auth.sh`: Envoy's
//! `envoy.service.auth.v3.Authorization/Check` answered OK at once, with the
//! response an allowed keyward check gives (the same upstream headers, the
//! same headers removed, the same dynamic metadata), and no validation at all.
//!
//! ```text
//! cargo build --release -p null-authz
//! target/release/null-authz 127.0.0.1:50052
//! ```
//!
//! It is the floor keyward's ext_authz is measured against: what Envoy's
//! ext_authz client and a tonic server cost when authorization itself is
//! free. It serves the same way keyward does (tonic, `TCP_NODELAY`), so the
//! difference between the two is keyward's own work. A benchmark tool, not
//! part of keyward.

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use envoy_types::pb::google::rpc;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Allows every request, answering as keyward does for a valid key.
struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Read the header keyward would read, so the work of getting to it is
        // in the floor too.
        let _presented = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|attributes| attributes.request.as_ref())
            .and_then(|request| request.http.as_ref())
            .and_then(|http| http.headers.get("authorization"));
        let fields = HashMap::from([
            ("key_id".to_owned(), string_value(KEY_ID)),
            ("organization_id".to_owned(), string_value(ORGANIZATION)),
            ("scopes".to_owned(), string_value("")),
        ]);
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![
                    set_header("x-keyward-key-id", KEY_ID),
                    set_header("x-keyward-organization-id", ORGANIZATION),
                    set_header("x-keyward-scopes", ""),
                ],
                headers_to_remove: vec![
                    "authorization".to_owned(),
                    "x-keyward-workspace-id".to_owned(),
                ],
                ..Default::default()
            })),
            dynamic_metadata: Some(Struct {
                fields: HashMap::from([(
                    "keyward".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(Struct { fields })),
                    },
                )]),
            }),
        }))
    }
}

const KEY_ID: &str = "key_01JBENCHNULLAUTHZ000000000";
const ORGANIZATION: &str = "bench";

fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..Default::default()
    }
}

fn string_value(value: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(value.to_owned())),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50052".to_owned())
        .parse()?;
    let incoming = TcpIncoming::bind(addr)?.with_nodelay(Some(true));
    eprintln!("null-authz listening on {addr}");
    Server::builder()
        .add_service(AuthorizationServer::new(AllowAll))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
