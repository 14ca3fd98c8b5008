//! keyward: the gRPC server and CLI.
//!
//! `startup` builds the application (store, listener, services); `admin` and
//! `validation_api` are the two keyward.v1 services; `ext_authz` is Envoy's
//! `Authorization/Check`; `validation` is the
//! validation path they share with the auth layer; `error` is the one place
//! where errors become `tonic::Status`; `convert` holds every wire/domain
//! conversion. Only this crate knows about tonic.

pub mod admin;
pub mod cache;
pub mod config;
pub mod convert;
pub mod error;
pub mod ext_authz;
pub mod pb;
pub mod request_id;
pub mod startup;
pub mod telemetry;
pub mod validation;
pub mod validation_api;

pub use cache::CacheSettings;
pub use startup::{Application, Settings, StartupError, bootstrap, open_store};
pub use validation::ValidatorSettings;

/// The defaults of a clap argument group, as its flags declare them, with
/// the `KEYWARD_*` environment ignored: `Default` of a settings struct, so
/// that each default is written once, in its `#[arg]` attribute.
fn clap_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults"))
        .mut_args(|arg| arg.env(None::<&'static str>))
        .no_binary_name(true);
    let matches = command
        .try_get_matches_from(std::iter::empty::<&str>())
        .expect("every setting has a valid default");
    T::from_arg_matches(&matches).expect("every setting has a valid default")
}
