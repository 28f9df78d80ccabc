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
use phalanx_crypto::{ChainId, Digest, KeyPair, PublicKey};
use phalanx_ledger::{Genesis, Leg, Transfer};
use phalanx_node::light::{self, AccountBundle, Anchor, BlockBundle, ReceiptBundle};
use phalanx_node::rpc::receipt_json;
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
        #[command(flatten)]
        verify: VerifyArgs,
    },
    /// Show a transaction's status.
    Status {
        /// The transaction hash (hex).
        hash: String,
        #[command(flatten)]
        read: ReadArgs,
    },
}

/// What every read command takes: the node, the height to read at or
/// above, whether to verify, and the output format.
#[derive(clap::Args, Clone)]
pub struct ReadArgs {
    /// A node's JSON-RPC URL.
    #[arg(long)]
    pub rpc: String,
    /// Answer only once the node has committed this height.
    #[arg(long)]
    pub min_height: Option<u64>,
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl ReadArgs {
    /// The read options the node is sent.
    fn options(&self) -> Value {
        json!({ "proof": self.verify.verify, "min_height": self.min_height })
    }
}

/// `--verify`: check the node's answer against the genesis, trusting
/// nothing the node says that its proof does not show.
#[derive(clap::Args, Clone)]
pub struct VerifyArgs {
    /// Verify the answer with its proof bundle against the genesis's
    /// validators (needs --genesis).
    #[arg(long, requires = "genesis")]
    pub verify: bool,
    /// The chain's genesis file: the only thing --verify trusts.
    #[arg(long)]
    pub genesis: Option<PathBuf>,
}

impl VerifyArgs {
    fn anchor(&self) -> Result<Option<Anchor>> {
        if !self.verify {
            return Ok(None);
        }
        let path = self
            .genesis
            .as_ref()
            .context("--verify needs --genesis FILE")?;
        let g = Genesis::load(path).with_context(|| format!("genesis {}", path.display()))?;
        Ok(Some(Anchor::from_genesis(&g)?))
    }
}

fn failed(e: light::LightError) -> anyhow::Error {
    anyhow::anyhow!("verification failed: {e}")
}

/// A field of a node's answer that its proof must agree with.
fn agree(what: &str, claimed: &Value, proven: Value) -> Result<()> {
    if *claimed != proven {
        bail!(
            "verification failed: the node answered {what} = {claimed}, but its proof shows {proven}"
        );
    }
    Ok(())
}

/// Verifies a transaction answer that has a proof bundle; returns the
/// answer with only proven values, and how it was proven.
fn verify_tx(anchor: &Anchor, hash: &Digest, v: &Value) -> Result<Value> {
    let bundle: ReceiptBundle = light::from_hex(
        v["proof"]
            .as_str()
            .context("verification failed: the node sent no proof")?,
    )
    .map_err(failed)?;
    let (exec, receipt) = anchor.verify_receipt(hash, &bundle).map_err(failed)?;
    agree("height", &v["height"], json!(exec.height.0))?;
    agree("receipt", &v["receipt"], receipt_json(&receipt))?;
    agree("index", &v["index"], json!(bundle.proof.index))?;
    Ok(json!({
        "hash": hash.to_hex(),
        "status": "committed",
        "height": exec.height.0,
        "index": bundle.proof.index,
        "block_id": exec.block_id.to_hex(),
        "receipt": receipt_json(&receipt),
        "verified": {
            "certified_by_height": bundle.certified.header.height.0,
            "signers": bundle.certified.cert.signers.count(),
            "receipts_root": exec.receipts_root.to_hex(),
        },
    }))
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
        TxCmd::Status { hash, read } => tx_status(&hash, &read),
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
            verify,
        } => {
            let anchor = verify.anchor()?;
            if anchor.is_some() && no_wait {
                bail!("--verify needs the commit: leave out --no-wait");
            }
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
                let r = match &anchor {
                    Some(anchor) if r["status"] == "committed" => {
                        let hash = Digest::from_hex(r["hash"].as_str().unwrap_or_default())
                            .context("the node's transaction hash")?;
                        let v = call(
                            &rpc,
                            "ledger_getTransaction",
                            vec![
                                json!(hash.to_hex()),
                                json!({ "proof": true, "min_height": r["height"] }),
                            ],
                        )
                        .await?;
                        verify_tx(anchor, &hash, &v)?
                    }
                    _ => r,
                };
                print(&r, j, |r| {
                    let mut s = format!(
                        "transaction {} {}",
                        r["hash"].as_str().unwrap_or(""),
                        r["status"].as_str().unwrap_or("")
                    );
                    if let Some(h) = r["height"].as_u64() {
                        let status = r["receipt"]["status"].as_str().unwrap_or("");
                        s.push_str(&format!(" at height {h}: {status}"));
                        if r["verified"].is_object() {
                            s.push_str(&verified_line(&r["verified"]));
                        }
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

fn verified_line(v: &Value) -> String {
    format!(
        "\nverified: certified by the block at height {} ({} validators signed)",
        v["certified_by_height"], v["signers"]
    )
}

/// `phalanx tx status HASH --rpc URL`.
pub fn tx_status(hash: &str, read: &ReadArgs) -> Result<()> {
    let hash = Digest::from_hex(hash.strip_prefix("0x").unwrap_or(hash))
        .with_context(|| format!("transaction hash `{hash}`"))?;
    let anchor = read.verify.anchor()?;
    let j = read.json;
    block_on(async move {
        let v = call(
            &read.rpc,
            "ledger_getTransaction",
            vec![json!(hash.to_hex()), read.options()],
        )
        .await?;
        let v = match &anchor {
            Some(anchor) if v["status"] == "committed" => verify_tx(anchor, &hash, &v)?,
            Some(_) => bail!(
                "cannot verify: the transaction is {} (only a committed transaction has a proof)",
                v["status"]
            ),
            None => v,
        };
        print(&v, j, |v| {
            let mut s = format!(
                "transaction {} {}",
                v["hash"].as_str().unwrap_or(""),
                v["status"].as_str().unwrap_or("")
            );
            if let Some(h) = v["height"].as_u64() {
                s.push_str(&format!(
                    " at height {h}: {}",
                    v["receipt"]["status"].as_str().unwrap_or("")
                ));
            }
            if v["verified"].is_object() {
                s.push_str(&verified_line(&v["verified"]));
            }
            s
        });
        Ok(())
    })
}

/// `phalanx account ADDR --rpc URL`.
pub fn account(addr: &str, read: &ReadArgs) -> Result<()> {
    let addr = parse_address(addr)?;
    let anchor = read.verify.anchor()?;
    let j = read.json;
    block_on(async move {
        let params = vec![json!(addr.to_hex()), read.options()];
        let v = call(&read.rpc, "ledger_getAccount", params).await?;
        let v = match &anchor {
            None => v,
            Some(anchor) => {
                let bundle: AccountBundle = light::from_hex(
                    v["certified_proof"]
                        .as_str()
                        .context("verification failed: the node sent no proof")?,
                )
                .map_err(failed)?;
                let (h, a) = anchor.verify_account(&addr, &bundle).map_err(failed)?;
                let acct = a.unwrap_or_default();
                agree("height", &v["height"], json!(h.0))?;
                agree("exists", &v["exists"], json!(a.is_some()))?;
                agree("balance", &v["balance"], json!(acct.balance))?;
                agree("nonce", &v["nonce"], json!(acct.nonce))?;
                json!({
                    "address": addr.to_hex(),
                    "exists": a.is_some(),
                    "balance": acct.balance,
                    "nonce": acct.nonce,
                    "height": h.0,
                    "verified": {
                        "certified_by_height": bundle.certified.header.height.0,
                        "signers": bundle.certified.cert.signers.count(),
                    },
                })
            }
        };
        print(&v, j, |v| {
            let mut s = format!(
                "address: {}\nbalance: {}\nnonce:   {}\nheight:  {}",
                v["address"].as_str().unwrap_or(""),
                v["balance"],
                v["nonce"],
                v["height"]
            );
            if v["verified"].is_object() {
                s.push_str(&verified_line(&v["verified"]));
            }
            s
        });
        Ok(())
    })
}

/// `phalanx block HEIGHT|latest --rpc URL`.
pub fn block(which: &str, read: &ReadArgs) -> Result<()> {
    let which = match which {
        "latest" => json!("latest"),
        h => json!(
            h.parse::<u64>()
                .with_context(|| format!("block `{h}`: expected a height or `latest`"))?
        ),
    };
    let anchor = read.verify.anchor()?;
    let j = read.json;
    block_on(async move {
        let v = call(&read.rpc, "ledger_getBlock", vec![which, read.options()]).await?;
        let v = match &anchor {
            None => v,
            Some(anchor) => {
                let bundle: BlockBundle = light::from_hex(
                    v["proof"]
                        .as_str()
                        .context("verification failed: the node sent no proof")?,
                )
                .map_err(failed)?;
                let b = anchor.verify_block(&bundle).map_err(failed)?;
                let txs: Vec<String> = b.transactions.iter().map(|t| t.to_hex()).collect();
                agree("height", &v["height"], json!(b.height.0))?;
                agree("block_id", &v["block_id"], json!(b.id.to_hex()))?;
                agree("transactions", &v["transactions"], json!(txs))?;
                agree(
                    "certified_state_root",
                    &v["certified_state_root"],
                    json!(b.execution.map(|r| r.state_root.to_hex())),
                )?;
                json!({
                    "height": b.height.0,
                    "block_id": b.id.to_hex(),
                    "transactions": txs,
                    "state_root": b.execution.map(|r| r.state_root.to_hex()),
                    "verified": {
                        "certified_by_height": b.height.0,
                        "signers": bundle.cert.signers.count(),
                        "execution_certified_by_height": bundle.execution.as_ref().map(|c| c.header.height.0),
                    },
                })
            }
        };
        print(&v, j, |v| {
            let mut s = format!(
                "block {} at height {}: {} transactions",
                v["block_id"].as_str().unwrap_or(""),
                v["height"],
                v["transactions"].as_array().map_or(0, |t| t.len())
            );
            if v["verified"].is_object() {
                s.push_str(&verified_line(&v["verified"]));
                if let Some(root) = v["state_root"].as_str() {
                    s.push_str(&format!(
                        "\nstate root after it: {root} (certified by the block at height {})",
                        v["verified"]["execution_certified_by_height"]
                    ));
                }
            }
            s
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
