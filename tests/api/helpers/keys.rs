//! [`NewKey`]: CreateKey through [`TestApp::create_key`](super::TestApp::create_key)
//! (or any keyward's admin client),
//! with only the fields a test cares about written out.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use chrono::{DateTime, Utc};
use keyward::pb;
use keyward::pb::key_admin_service_client::KeyAdminServiceClient;
use tonic::Status;
use tonic::transport::Channel;

use super::{record_secret, with_key};

/// A CreateKey request being built: a key named as given, no scopes,
/// standard, live (made with acme's admin key through `TestApp::create_key`). Awaiting it creates the key
/// (and panics if CreateKey fails); [`NewKey::send`] returns the status instead.
#[must_use = "a key is created only when awaited"]
pub struct NewKey<'a> {
    client: KeyAdminServiceClient<Channel>,
    credential: &'a str,
    request: pb::CreateKeyRequest,
}

/// A key CreateKey returned. Its secret is recorded for the secret scan.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The key's id.
    pub id: String,
    /// The raw key.
    pub secret: String,
    /// The key as CreateKey returned it.
    pub key: pb::ApiKey,
}

impl<'a> NewKey<'a> {
    /// A key named `name`, to be created through `client` with the admin
    /// key `credential` (of whichever organization and keyward).
    pub fn on(client: KeyAdminServiceClient<Channel>, credential: &'a str, name: &str) -> Self {
        Self {
            client,
            credential,
            request: pb::CreateKeyRequest {
                name: name.to_owned(),
                ..Default::default()
            },
        }
    }

    /// The scopes the key holds.
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.request.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The key's workspace.
    pub fn workspace(mut self, workspace_id: &str) -> Self {
        self.request.workspace_id = workspace_id.to_owned();
        self
    }

    /// An admin key instead of a standard one.
    pub fn admin(mut self) -> Self {
        self.request.kind = pb::KeyKind::Admin.into();
        self
    }

    /// A test-environment key (`sk_test_`).
    pub fn test_environment(mut self) -> Self {
        self.request.environment = pb::Environment::Test.into();
        self
    }

    /// When the key expires.
    pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.request.expires_at = Some(prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: i32::try_from(at.timestamp_subsec_nanos()).expect("below a second"),
        });
        self
    }

    /// Any other field of the request.
    pub fn with(mut self, change: impl FnOnce(&mut pb::CreateKeyRequest)) -> Self {
        change(&mut self.request);
        self
    }

    /// Made with `admin_key` (of whichever organization) instead of acme's.
    pub fn by(mut self, admin_key: &'a str) -> Self {
        self.credential = admin_key;
        self
    }

    /// The request as built, for a test that sends it itself.
    pub fn request(self) -> pb::CreateKeyRequest {
        self.request
    }

    /// Sends CreateKey: the created key, or the status it failed with.
    pub async fn send(mut self) -> Result<CreatedKey, Status> {
        let response = self
            .client
            .create_key(with_key(self.credential, self.request))
            .await?
            .into_inner();
        record_secret(&response.secret);
        let key = response.api_key.expect("CreateKey returns the key");
        Ok(CreatedKey {
            id: key.id.clone(),
            secret: response.secret,
            key,
        })
    }
}

impl<'a> IntoFuture for NewKey<'a> {
    type Output = CreatedKey;
    type IntoFuture = Pin<Box<dyn Future<Output = CreatedKey> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.send().await.expect("CreateKey succeeds") })
    }
}
