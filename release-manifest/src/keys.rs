//! `release-manifest keys generate`.

use std::path::PathBuf;

use anyhow::Context as _;
use molt_schema::cli::Failure;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Generate root, targets, snapshot and timestamp keys (Ed25519, PEM, mode 0600).
    Generate(GenerateArgs),
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Directory to write the keys to; root keys go to DIR/root/ so they can be kept apart.
    #[arg(long)]
    out: PathBuf,
    /// How many root keys.
    #[arg(long, default_value_t = 3)]
    root_keys: usize,
    /// How many root keys must sign a new root.
    #[arg(long, default_value_t = 2)]
    root_threshold: u64,
    /// Print the public key ids as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: Command) -> Result<i32, Failure> {
    let Command::Generate(args) = cmd;
    let keys = molt_publish::tuf::keys::generate(&args.out, args.root_keys, args.root_threshold)
        .with_context(|| format!("cannot generate keys in {}", args.out.display()))?;
    if args.json {
        crate::print_json(&keys.info)?;
    } else {
        for (role, ids) in &keys.info.roles {
            for id in ids {
                println!("{role:<10} {id}");
            }
        }
        println!(
            "root threshold {} of {}; keep {} offline",
            keys.info.root_threshold,
            args.root_keys,
            args.out.join("root").display()
        );
    }
    Ok(0)
}
