//! The command line: `keyrelay serve` runs the server and `keyrelay migrate` prepares its
//! store; the other subcommands are a client for people, talking gRPC to a running server
//! and printing text, or JSON with `--json`.

mod access;
mod args;
mod connect;
mod fleet;
mod output;
mod providers;
mod revocation;
mod verifier;

pub use args::{
    Cli, ClientCommand, ClientOptions, Command, KeysCommand, PolicyArgs, ProvidersCommand,
    TokenRoleArg, TokensCommand,
};
pub use connect::ClientError;

/// Runs a client command.
pub async fn run(command: ClientCommand) -> Result<(), ClientError> {
    match command {
        ClientCommand::Providers { client, action } => providers::run(&client, action).await,
        ClientCommand::Health { client } => fleet::health(&client).await,
        ClientCommand::Cluster { client } => fleet::cluster(&client).await,
        ClientCommand::Watch {
            client,
            tenant,
            provider,
        } => verifier::watch(&client, tenant, provider).await,
        ClientCommand::Verify {
            client,
            tenant,
            provider,
            issuer,
            audience,
            token,
        } => verifier::verify(&client, tenant, provider, issuer, audience, &token).await,
        ClientCommand::Tokens { client, action } => access::tokens(&client, action).await,
        ClientCommand::TenantAccess {
            client,
            tenant,
            require_verifier_token,
        } => access::tenant_access(&client, tenant, require_verifier_token).await,
        ClientCommand::Audit {
            client,
            tenant,
            limit,
        } => access::audit(&client, tenant, limit).await,
        ClientCommand::Resolve {
            client,
            tenant,
            provider,
            kid,
        } => verifier::resolve(&client, tenant, provider, kid).await,
        ClientCommand::Keys { client, action } => revocation::run(&client, action).await,
    }
}
