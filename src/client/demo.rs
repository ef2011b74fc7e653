//! `concord demo ...`: etcd's classic recipe demos, driven by lines on stdin so several terminals (or a
//! test) can make them contend. They use only the public client, so they run against etcd as well.

use std::time::Duration;

use clap::{Args, Subcommand};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{
    stm, Barrier, Client, ClientError, DoubleBarrier, Isolation, Mutex, PriorityQueue, Queue, RWMutex,
    Session,
};
use crate::pb::etcdserverpb::{PutRequest, RangeRequest};

#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
    /// Comma-separated client endpoints.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    #[command(subcommand)]
    pub demo: Demo,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Demo {
    /// Takes the lock NAME, then holds it until a line (or end of input) arrives.
    Lock { name: String },
    /// `r` takes a read lock, `w` a write lock; the next line releases it.
    Rwlock { name: String },
    /// `push X` enqueues X; `pop` dequeues (waiting while the queue is empty) and prints it.
    Queue { name: String },
    /// `push X P` enqueues X at priority P (lower first); `pop` dequeues and prints.
    Pqueue { name: String },
    /// `hold`, `release`, `wait` on the barrier NAME.
    Barrier { name: String },
    /// Enters the double barrier NAME of COUNT participants, waits for a line, then leaves.
    DoubleBarrier { name: String, count: usize },
    /// etcd's STM bank: 5 accounts of 100, 10 tasks × 100 transfers of half the source balance.
    Bank,
}

async fn line(lines: &mut tokio::io::Lines<BufReader<tokio::io::Stdin>>) -> Option<String> {
    lines.next_line().await.ok().flatten().map(|l| l.trim().to_string())
}

pub async fn run(args: DemoArgs) -> Result<(), ClientError> {
    let client = Client::connect(&args.endpoints, Duration::from_secs(5)).await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    match args.demo {
        Demo::Lock { name } => {
            let session = Session::new(&client, super::DEFAULT_TTL).await?;
            let mut m = Mutex::new(&session, &name);
            m.lock().await?;
            println!("acquired lock {}", String::from_utf8_lossy(m.key()));
            line(&mut lines).await;
            m.unlock().await?;
            println!("released");
        }
        Demo::Rwlock { name } => {
            let session = Session::new(&client, super::DEFAULT_TTL).await?;
            let mut rw = RWMutex::new(&session, &name);
            while let Some(cmd) = line(&mut lines).await {
                match cmd.as_str() {
                    "r" => rw.read_lock().await?,
                    "w" => rw.write_lock().await?,
                    _ => continue,
                }
                println!("acquired {} lock", if cmd == "r" { "read" } else { "write" });
                line(&mut lines).await;
                rw.unlock().await?;
                println!("released");
            }
        }
        Demo::Queue { name } => {
            let q = Queue::new(&client, &name);
            while let Some(cmd) = line(&mut lines).await {
                match cmd.split_once(' ') {
                    Some(("push", item)) => q.enqueue(item.as_bytes()).await?,
                    _ if cmd == "pop" => println!("{}", String::from_utf8_lossy(&q.dequeue().await?)),
                    _ => eprintln!("push X | pop"),
                }
            }
        }
        Demo::Pqueue { name } => {
            let q = PriorityQueue::new(&client, &name);
            while let Some(cmd) = line(&mut lines).await {
                let words: Vec<&str> = cmd.split_whitespace().collect();
                match words.as_slice() {
                    ["push", item, pr] if pr.parse::<u16>().is_ok() => {
                        q.enqueue(item.as_bytes(), pr.parse().unwrap_or(0)).await?
                    }
                    ["pop"] => println!("{}", String::from_utf8_lossy(&q.dequeue().await?)),
                    _ => eprintln!("push X PRIORITY | pop"),
                }
            }
        }
        Demo::Barrier { name } => {
            let b = Barrier::new(&client, &name);
            while let Some(cmd) = line(&mut lines).await {
                match cmd.as_str() {
                    "hold" => b.hold().await?,
                    "release" => b.release().await?,
                    "wait" => b.wait().await?,
                    _ => {
                        eprintln!("hold | release | wait");
                        continue;
                    }
                }
                println!("{cmd}: done");
            }
        }
        Demo::DoubleBarrier { name, count } => {
            let session = Session::new(&client, super::DEFAULT_TTL).await?;
            let mut d = DoubleBarrier::new(&session, &name, count);
            d.enter().await?;
            println!("entered");
            line(&mut lines).await;
            d.leave().await?;
            println!("left");
        }
        Demo::Bank => bank(&client).await?,
    }
    Ok(())
}

async fn bank(client: &Client) -> Result<(), ClientError> {
    let account = |i: usize| format!("accts/{i}").into_bytes();
    for i in 0..5 {
        client.kv().put(PutRequest { key: account(i), value: b"100".to_vec(), ..Default::default() }).await?;
    }
    let mut tasks = Vec::new();
    for t in 0..10u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut seed = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move |n: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % n) as usize
            };
            for _ in 0..100 {
                let (from, to) = (account(next(5)), account(next(5)));
                if from == to {
                    continue;
                }
                transfer_half(&client, Isolation::SerializableSnapshot, &from, &to, 0).await?;
            }
            Ok::<(), ClientError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| tonic::Status::internal(e.to_string()))??;
    }
    let mut sum = 0;
    for i in 0..5 {
        let r = client.kv().range(RangeRequest { key: account(i), ..Default::default() }).await?.into_inner();
        let v: i64 = r.kvs.first().map_or(0, |kv| String::from_utf8_lossy(&kv.value).parse().unwrap_or(0));
        println!("accts/{i}: {v}");
        sum += v;
    }
    println!("account sum is {sum}");
    Ok(())
}

/// The bank demo's step (also `concord bench stm`'s): moves half of `from`'s balance to `to` in one STM
/// transaction; an account that does not exist (or is not a number) holds `missing`.
pub async fn transfer_half(
    client: &Client,
    iso: Isolation,
    from: &[u8],
    to: &[u8],
    missing: i64,
) -> Result<(), ClientError> {
    stm::run(client, iso, &[], |s| {
        let (from, to) = (from.to_vec(), to.to_vec());
        Box::pin(async move {
            let balance = |v: Vec<u8>| String::from_utf8_lossy(&v).parse::<i64>().unwrap_or(missing);
            let (a, b) = (balance(s.get(&from).await?), balance(s.get(&to).await?));
            s.put(&from, (a - a / 2).to_string().as_bytes());
            s.put(&to, (b + a / 2).to_string().as_bytes());
            Ok(())
        })
    })
    .await
    .map(|_| ())
}
