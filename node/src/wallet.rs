//! The wallet commands of the `phalanx` binary: keys, offline signing, and
//! a JSON-RPC client for sending, accounts and status. Human output by
//! default, `--json` for scripts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use jsonrpsee_core::client::ClientT;
use jsonrpsee_core::params::ArrayParams;
use jsonrpsee_http_client::HttpClient;
use phalanx_crypto::{ChainId, KeyPair, PublicKey};
use phalanx_ledger::{Leg, Transfer};
use serde_json::{Value, json};

/// How long a wallet call waits for the node (a commit wait included).
const RPC_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Generate a key and write it (mode 0600; refuses to overwrite).
    New {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a key file's address.
    Show {
        /// The key file.
        #[arg(long)]
        key: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What a transfer needs, for `tx sign` and `tx send`.
#[derive(clap::Args)]
pub struct TransferArgs {
    /// The sender's key file.
    #[arg(long)]
    key: PathBuf,
    /// Recipient address (hex).
    #[arg(long)]
    to: String,
    /// Amount.
    #[arg(long)]
    amount: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum TxCmd {
    /// Sign a transfer offline and print it as hex.
    Sign {
        #[command(flatten)]
        transfer: TransferArgs,
        /// The sender's next nonce.
        #[arg(long)]
        nonce: u64,
        /// The chain id.
        #[arg(long)]
        chain_id: String,
    },
    /// Sign and submit a transfer, waiting for its commit.
    Send {
        /// A node's JSON-RPC URL.
        #[arg(long)]
        rpc: String,
        #[command(flatten)]
        transfer: TransferArgs,
        /// Nonce (default: the account's next nonce, asked from the node).
        #[arg(long)]
        nonce: Option<u64>,
        /// Return once accepted into the mempool.
        #[arg(long)]
        no_wait: bool,
    },
}

fn parse_address(s: &str) -> Result<PublicKey> {
    PublicKey::from_hex(s.strip_prefix("0x").unwrap_or(s)).with_context(|| format!("address `{s}`"))
}

fn load_key(p: &Path) -> Result<KeyPair> {
    KeyPair::load(p).with_context(|| format!("key {}", p.display()))
}

fn sign(key: &KeyPair, to: &PublicKey, amount: u64, nonce: u64, chain: &ChainId) -> String {
    let t = Transfer {
        chain_id: chain.clone(),
        sender: key.public(),
        nonce,
        legs: vec![Leg { to: *to, amount }],
    }
    .sign(key);
    hex::encode(t.encode())
}

fn print(v: &Value, json_out: bool, human: impl FnOnce(&Value) -> String) {
    if json_out {
        println!("{v}");
    } else {
        println!("{}", human(v));
    }
}

/// `phalanx keys …`.
pub fn keys(cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::New { out, json: j } => {
            let key = KeyPair::generate()?;
            key.save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            let v = json!({ "address": key.public().to_hex(), "key_file": out });
            print(&v, j, |v| {
                format!("address: {}", v["address"].as_str().unwrap_or(""))
            });
        }
        KeysCmd::Show { key, json: j } => {
            let key = load_key(&key)?;
            let v = json!({ "address": key.public().to_hex() });
            print(&v, j, |v| {
                format!("address: {}", v["address"].as_str().unwrap_or(""))
            });
        }
    }
    Ok(())
}

async fn call(rpc: &str, method: &str, params: Vec<Value>) -> Result<Value> {
    let client = HttpClient::builder()
        .request_timeout(RPC_TIMEOUT)
        .build(rpc)
        .with_context(|| format!("RPC URL `{rpc}`"))?;
    let mut p = ArrayParams::new();
    for v in params {
        p.insert(v)?;
    }
    match client.request::<Value, _>(method, p).await {
        Ok(v) => Ok(v),
        Err(jsonrpsee_core::ClientError::Call(e)) => match hint(e.code()) {
            Some(h) => bail!("{method}: error {}: {}\n{h}", e.code(), e.message()),
            None => bail!("{method}: error {}: {}", e.code(), e.message()),
        },
        Err(e) => bail!("{method} at {rpc}: {e}"),
    }
}

/// What a user can do about a refusal, by its stable code
/// (`phalanx_node::rpc::codes`).
pub fn hint(code: i32) -> Option<&'static str> {
    use crate::rpc::codes;
    Some(match code {
        codes::NONCE_TOO_LOW => {
            "hint: that nonce is used; leave out --nonce to take the account's next one"
        }
        codes::NONCE_TOO_HIGH => "hint: send the transactions for the nonces before it first",
        codes::INSUFFICIENT_FUNDS => {
            "hint: the committed balance does not cover the amount; check it with `phalanx account`"
        }
        codes::MEMPOOL_FULL => "hint: the node is busy; retry in a few seconds",
        codes::NONCE_TAKEN => {
            "hint: a transaction with this nonce is already pending; wait for it to commit"
        }
        codes::ZERO_AMOUNT => "hint: every transfer moves at least 1",
        codes::BELOW_MINIMUM_BALANCE => {
            "hint: the recipient has no account yet; the first transfer to it must bring at least the chain's minimum balance"
        }
        codes::BUSY => "hint: the node is overloaded; retry in a moment or send to another node",
        codes::FUTURE_LIMIT | codes::FUTURE_FULL => {
            "hint: this nonce is ahead of the account's next one; send the missing nonces first (`phalanx account` shows the next nonce)"
        }
        _ => return None,
    })
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

/// `phalanx tx …`.
pub fn tx(cmd: TxCmd) -> Result<()> {
    match cmd {
        TxCmd::Sign {
            transfer:
                TransferArgs {
                    key,
                    to,
                    amount,
                    json: j,
                },
            nonce,
            chain_id,
        } => {
            if amount == 0 {
                bail!("--amount 0: every transfer moves at least 1");
            }
            let key = load_key(&key)?;
            let chain =
                ChainId::new(&chain_id).with_context(|| format!("chain id `{chain_id}`"))?;
            let hex_tx = sign(&key, &parse_address(&to)?, amount, nonce, &chain);
            if j {
                println!("{}", json!({ "tx": hex_tx }));
            } else {
                println!("{hex_tx}");
            }
            Ok(())
        }
        TxCmd::Send {
            rpc,
            transfer:
                TransferArgs {
                    key,
                    to,
                    amount,
                    json: j,
                },
            nonce,
            no_wait,
        } => {
            let key = load_key(&key)?;
            let to = parse_address(&to)?;
            if amount == 0 {
                bail!("--amount 0: every transfer moves at least 1");
            }
            block_on(async move {
                let status = call(&rpc, "ledger_status", vec![]).await?;
                let chain_id = status["chain_id"].as_str().unwrap_or_default().to_string();
                let chain = ChainId::new(&chain_id)
                    .with_context(|| format!("the node's chain id `{chain_id}`"))?;
                let nonce = match nonce {
                    Some(n) => n,
                    None => {
                        let a = call(
                            &rpc,
                            "ledger_getAccount",
                            vec![json!(key.public().to_hex())],
                        )
                        .await?;
                        a["nonce"].as_u64().unwrap_or(0)
                    }
                };
                let wait = if no_wait { "none" } else { "commit" };
                let hex_tx = sign(&key, &to, amount, nonce, &chain);
                let r = call(
                    &rpc,
                    "ledger_submitTransaction",
                    vec![json!(hex_tx), json!(wait)],
                )
                .await?;
                print(&r, j, |r| {
                    let mut s = format!(
                        "transaction {} {}",
                        r["hash"].as_str().unwrap_or(""),
                        r["status"].as_str().unwrap_or("")
                    );
                    if let Some(h) = r["height"].as_u64() {
                        let status = r["receipt"]["status"].as_str().unwrap_or("");
                        s.push_str(&format!(" at height {h}: {status}"));
                        if status != "applied" {
                            s.push_str(
                                "\n(a failure receipt is not final: the same transaction can still apply once its nonce and funds allow)",
                            );
                        }
                    }
                    s
                });
                Ok(())
            })
        }
    }
}

/// `phalanx account ADDR --rpc URL`.
pub fn account(addr: &str, rpc: &str, j: bool) -> Result<()> {
    let addr = parse_address(addr)?;
    block_on(async move {
        let v = call(rpc, "ledger_getAccount", vec![json!(addr.to_hex())]).await?;
        print(&v, j, |v| {
            format!(
                "address: {}\nbalance: {}\nnonce:   {}\nheight:  {}",
                v["address"].as_str().unwrap_or(""),
                v["balance"],
                v["nonce"],
                v["height"]
            )
        });
        Ok(())
    })
}

/// `phalanx status --rpc URL`.
pub fn status(rpc: &str, j: bool) -> Result<()> {
    block_on(async move {
        let v = call(rpc, "ledger_status", vec![]).await?;
        print(&v, j, |v| {
            format!(
                "chain:     {}\nvalidator: {}\nheight:    {}\nview:      {} (leader {})\npeers:     {}\nsyncing:   {}\nmempool:   {} transactions",
                v["chain_id"].as_str().unwrap_or(""),
                v["validator"].as_str().unwrap_or(""),
                v["height"],
                v["view"],
                v["leader"],
                v["peers"],
                v["syncing"],
                v["mempool"]["transactions"]
            )
        });
        Ok(())
    })
}
