//! Verifies one token with keys from a running keyrelay.
//!
//! cargo run -p keyrelay-verifier --example verify_token -- http://127.0.0.1:50051 acme <TOKEN>

use keyrelay_verifier::{Expectations, Verifier};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(endpoint), Some(tenant), Some(token)) = (args.next(), args.next(), args.next())
    else {
        eprintln!("usage: verify_token ENDPOINT TENANT TOKEN");
        std::process::exit(2);
    };
    let verifier = Verifier::builder(endpoint, tenant).connect().await?;
    for keys in verifier.status().providers {
        println!(
            "{}: version {}, {} keys, age {:?}",
            keys.provider,
            keys.version,
            keys.keys.keys.len(),
            keys.age()
        );
    }
    let claims: serde_json::Value = verifier.verify(&token, &Expectations::new()).await?;
    println!("{}", serde_json::to_string_pretty(&claims)?);
    Ok(())
}
