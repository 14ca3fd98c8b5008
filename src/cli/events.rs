//! `keyward events list`: the organization's audit log.

use clap::{Args, Subcommand};

use super::output::Report;
use super::{CliError, ClientArgs, connect};
use crate::pb;

/// `keyward events`: the client options and the subcommand.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// How to reach keyward.
    #[command(flatten, next_help_heading = "Connection and output")]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: EventsCommand,
}

/// The audit-log subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Lists audit events, newest first.
    List(ListEventsArgs),
}

/// `keyward events list`.
#[derive(Debug, Args)]
pub struct ListEventsArgs {
    /// Only events about this key id (deleted keys too).
    #[arg(long, default_value = "")]
    pub key_id: String,
    /// Events per page, 1 to 1000 (keyward's default: 20; with --all: 1000).
    #[arg(long)]
    pub limit: Option<i32>,
    /// Start after (older than) this event seq: the previous page's last seq.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<i64>,
    /// Follow the cursors to the end: every matching event.
    #[arg(long, conflicts_with = "after")]
    pub all: bool,
}

/// Page size of `--all` without `--limit`.
const ALL_PAGE: i32 = 1000;

/// Runs an audit-log subcommand.
pub(super) async fn run(args: EventsArgs) -> Result<Report, CliError> {
    let EventsCommand::List(list) = args.command;
    let mut request = pb::ListKeyEventsRequest {
        limit: list.limit.or(list.all.then_some(ALL_PAGE)),
        after_seq: list.after,
        before_seq: None,
        key_id: list.key_id,
    };
    let mut client = connect(&args.client).await?;
    let mut events = Vec::new();
    loop {
        let page = client.list_key_events(request.clone()).await?.into_inner();
        events.extend(page.events);
        if !list.all || !page.has_more {
            return Ok(Report::Events {
                first_seq: events.first().map_or(0, |event| event.seq),
                last_seq: events.last().map_or(0, |event| event.seq),
                has_more: page.has_more,
                events,
            });
        }
        if page.last_seq == 0 || request.after_seq == Some(page.last_seq) {
            // A server that says "more" without moving on would loop forever.
            return Err(CliError::BadResponse("a new last_seq with has_more"));
        }
        request.after_seq = Some(page.last_seq);
    }
}
