//! `herald token`: mint a subscriber token signed with the server's secret.

use herald_proto::Claims;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's HERALD_JWT_SECRET.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// User id (`sub`); the user may always read `user:<sub>`.
    #[arg(long)]
    pub sub: String,
    /// Channel pattern the token allows (`*` glob); repeat for several.
    #[arg(long = "channel", short)]
    pub channels: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.secret.len() < 16 {
        anyhow::bail!("the secret must be at least 16 bytes (same rule as the server)");
    }
    let now = herald_server::auth::now_secs();
    let claims = Claims {
        sub: args.sub,
        channels: args.channels,
        exp: Some(now + args.ttl),
        nbf: None,
        iat: Some(now),
    };
    println!(
        "{}",
        herald_proto::sign_hs256(&claims, args.secret.as_bytes())
    );
    Ok(())
}
