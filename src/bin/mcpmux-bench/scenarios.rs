//! The five scenarios. Each comparison runs both sides in the same run, alternating
//! which goes first round by round; ratios are taken per round (the two sides of one
//! round saw the same machine), and every figure is the median of its rounds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use serde_json::json;

use crate::Plan;
use crate::load::{self, CallStats, Delivery, HttpEvents, HttpSession, MakeRequest, Window, Ws};
use crate::procs::{self, Proc};
use crate::report::{Goal, Report, percentile};

/// What every scenario needs.
pub struct Context {
    /// Where `node_modules` is.
    pub root: PathBuf,
    /// The mcpmux binary.
    pub mcpmux: PathBuf,
    /// How big the run is.
    pub plan: Plan,
}

/// Per-round values of the figures of one comparison.
#[derive(Default)]
struct Series {
    direct_rate: Vec<f64>,
    gateway_rate: Vec<f64>,
    ratio: Vec<f64>,
    direct_p50: Vec<f64>,
    gateway_p50: Vec<f64>,
    direct_p99: Vec<f64>,
    gateway_p99: Vec<f64>,
    gateway_cpu: Vec<f64>,
    upstream_cpu: Vec<f64>,
    direct_bytes: Vec<f64>,
    gateway_bytes: Vec<f64>,
}

/// One side's round: rate (per second), p50/p99 (ms), bytes per second.
struct Measured {
    rate: f64,
    p50: f64,
    p99: f64,
    bytes: f64,
    /// Every answer of the round, warm-up included.
    answered: u64,
}

impl Measured {
    /// Microseconds of CPU per call, from CPU seconds over the whole round.
    fn per_call(&self, cpu_seconds: f64) -> f64 {
        cpu_seconds / self.answered.max(1) as f64 * 1e6
    }
}

fn measured(mut stats: CallStats, window: &Window) -> anyhow::Result<Measured> {
    if stats.errors > 0 {
        bail!("{} calls were answered with errors", stats.errors);
    }
    let seconds = window.seconds(stats.late);
    Ok(Measured {
        rate: stats.calls as f64 / seconds,
        p50: percentile(&mut stats.latencies_us, 50.0) / 1000.0,
        p99: percentile(&mut stats.latencies_us, 99.0) / 1000.0,
        bytes: stats.bytes as f64 / seconds,
        answered: stats.answered,
    })
}

impl Context {
    fn window(&self) -> Window {
        Window::after(self.plan.warmup, self.plan.window)
    }
}

/// A mcpmux configuration with one remote server, `name` at `url`.
fn remote_config(name: &str, url: &str, headers: serde_json::Value) -> serde_json::Value {
    json!({
        "mcpServers": { name: { "url": url, "headers": headers } },
        "gateway": { "maxSessions": 30000, "maxConnectionsPerIp": 30000 }
    })
}

/// Sockets to mcpmux, each with an initialized session with `server`.
async fn mcpmux_sockets(
    addr: SocketAddr,
    server: &str,
    count: usize,
    group: &str,
) -> anyhow::Result<Vec<Ws>> {
    let server = server.to_owned();
    let group = group.to_owned();
    let sockets: Vec<anyhow::Result<Ws>> = futures::stream::iter(0..count)
        .map(|_| {
            let (server, group) = (server.clone(), group.clone());
            async move {
                let mut ws = load::mcpmux_connect(addr).await?;
                load::ws_initialize(&mut ws, Some(&server), &group).await?;
                anyhow::Ok(ws)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    sockets.into_iter().collect()
}

/// Runs a closed loop on every socket at once (each keeps `inflight` calls going).
async fn ws_loops(
    sockets: Vec<Ws>,
    server: Option<&str>,
    inflight: usize,
    make: &MakeRequest,
    window: Window,
) -> anyhow::Result<(CallStats, Vec<Ws>)> {
    let mut tasks = Vec::new();
    for mut ws in sockets {
        let (server, make) = (server.map(str::to_owned), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut next_id = 0;
            let stats = load::ws_closed_loop(
                &mut ws,
                server.as_deref(),
                inflight,
                &make,
                window,
                &mut next_id,
            )
            .await?;
            anyhow::Ok((stats, ws))
        }));
    }
    let mut all = CallStats::default();
    let mut sockets = Vec::new();
    for task in tasks {
        let (stats, ws) = task.await??;
        all.merge(stats);
        sockets.push(ws);
    }
    Ok((all, sockets))
}

async fn http_loops(
    sessions: &[HttpSession],
    inflight: usize,
    make: &MakeRequest,
    window: Window,
) -> anyhow::Result<CallStats> {
    let runs = sessions
        .iter()
        .map(|session| session.closed_loop(inflight, make, window, 0));
    let mut all = CallStats::default();
    for stats in futures::future::join_all(runs).await {
        all.merge(stats?);
    }
    Ok(all)
}

/// CPU seconds a process used while `work` ran, with what `work` returned.
async fn with_cpu<T>(procs: &[&Proc], work: impl Future<Output = T>) -> (T, Vec<f64>) {
    let before: Vec<f64> = procs.iter().map(|p| p.cpu_seconds()).collect();
    let out = work.await;
    let after: Vec<f64> = procs.iter().map(|p| p.cpu_seconds()).collect();
    (out, after.iter().zip(before).map(|(a, b)| a - b).collect())
}

/// Scenario a: echo calls on server-everything behind mcp-proxy, through mcpmux and
/// directly, one session each, 1 and 16 in flight.
pub async fn a_through_versus_direct(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let (proxy, url, key) = procs::start_mcp_proxy(&ctx.root).await?;
    let config = remote_config("everything", &url, json!({ "X-API-Key": key }));
    let (gateway, addr) = procs::start_mcpmux(&ctx.mcpmux, &config)?;
    let client = load::http_client();
    let direct = HttpSession::initialize(&client, &url, Some(&key), "bench-a").await?;
    let mut ws = load::mcpmux_connect(addr).await?;
    load::ws_initialize(&mut ws, Some("everything"), "bench-a").await?;
    let make = load::echo_request(None);
    let mut next_id = 0;
    for inflight in [1usize, 16] {
        let mut series = Series::default();
        for round in 0..ctx.plan.rounds {
            let mut via = None;
            let mut straight = None;
            for side in order(round) {
                let window = ctx.window();
                if side == Side::Direct {
                    let stats = direct.closed_loop(inflight, &make, window, 0).await?;
                    straight = Some(measured(stats, &window)?);
                } else {
                    let (stats, cpu) = with_cpu(&[&gateway], async {
                        load::ws_closed_loop(
                            &mut ws,
                            Some("everything"),
                            inflight,
                            &make,
                            window,
                            &mut next_id,
                        )
                        .await
                    })
                    .await;
                    let m = measured(stats?, &window)?;
                    series.gateway_cpu.push(m.per_call(cpu[0]));
                    via = Some(m);
                }
            }
            series.push(straight.context("direct")?, via.context("mcpmux")?);
        }
        let label = format!("echo, {inflight} in flight");
        report.add(
            "a",
            format!("{label}: direct"),
            "calls/s",
            series.direct_rate.clone(),
            None,
        );
        report.add(
            "a",
            format!("{label}: through mcpmux"),
            "calls/s",
            series.gateway_rate.clone(),
            None,
        );
        report.add(
            "a",
            format!("{label}: mcpmux / direct"),
            "x",
            series.ratio.clone(),
            Some(Goal::AtLeast(0.95)),
        );
        let added_p50 = diff(&series.gateway_p50, &series.direct_p50);
        let added_p99 = diff(&series.gateway_p99, &series.direct_p99);
        report.add(
            "a",
            format!("{label}: direct p50"),
            "ms",
            series.direct_p50.clone(),
            None,
        );
        report.add(
            "a",
            format!("{label}: added p50"),
            "ms",
            added_p50,
            Some(Goal::AtMost(0.2)),
        );
        report.add("a", format!("{label}: added p99"), "ms", added_p99, None);
        report.add(
            "a",
            format!("{label}: gateway CPU per call"),
            "us",
            series.gateway_cpu,
            None,
        );
    }
    report.note("a", "both sides use one mcp-proxy 6.7.19 + server-everything started by the bench; mcpmux reaches it as a url server (the path its own stdio children take)");
    drop((gateway, proxy));
    Ok(())
}

fn diff(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Direct,
    Gateway,
}

/// Which side goes first alternates round by round.
fn order(round: usize) -> [Side; 2] {
    if round % 2 == 0 {
        [Side::Direct, Side::Gateway]
    } else {
        [Side::Gateway, Side::Direct]
    }
}

impl Series {
    fn push(&mut self, direct: Measured, gateway: Measured) {
        self.ratio.push(gateway.rate / direct.rate);
        self.direct_rate.push(direct.rate);
        self.gateway_rate.push(gateway.rate);
        self.direct_p50.push(direct.p50);
        self.gateway_p50.push(gateway.p50);
        self.direct_p99.push(direct.p99);
        self.gateway_p99.push(gateway.p99);
        self.direct_bytes.push(direct.bytes / 1e6);
        self.gateway_bytes.push(gateway.bytes / 1e6);
    }
}

/// One case of scenario b.
struct Capacity {
    label: &'static str,
    sockets: usize,
    inflight: usize,
    bytes: Option<usize>,
    goal: Option<f64>,
}

/// Scenario b: gateway capacity against the fast upstream.
pub async fn b_capacity(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let (upstream, upstream_addr) = procs::start_upstream()?;
    let url = format!("http://{upstream_addr}/mcp");
    let (gateway, addr) =
        procs::start_mcpmux(&ctx.mcpmux, &remote_config("fast", &url, json!({})))?;
    let client = load::http_client();
    let many = ctx.plan.many_sockets;
    let cases = [
        Capacity {
            label: "echo, 1 socket x 64 in flight",
            sockets: 1,
            inflight: 64,
            bytes: None,
            goal: Some(0.75),
        },
        Capacity {
            label: "echo, many sockets x 8 in flight",
            sockets: many,
            inflight: 8,
            bytes: None,
            goal: Some(0.6),
        },
        Capacity {
            label: "64 KiB results, 1 socket x 16",
            sockets: 1,
            inflight: 16,
            bytes: Some(64 << 10),
            goal: None,
        },
        Capacity {
            label: "1 MiB results, 1 socket x 4",
            sockets: 1,
            inflight: 4,
            bytes: Some(1 << 20),
            goal: None,
        },
    ];
    for case in cases {
        let mut sessions = Vec::new();
        for _ in 0..case.sockets {
            sessions.push(HttpSession::initialize(&client, &url, None, "bench-b").await?);
        }
        let mut sockets = mcpmux_sockets(addr, "fast", case.sockets, "bench-b").await?;
        let make = load::echo_request(case.bytes);
        let mut series = Series::default();
        for round in 0..ctx.plan.rounds {
            let (mut straight, mut via) = (None, None);
            for side in order(round) {
                let window = ctx.window();
                if side == Side::Direct {
                    let (stats, cpu) = with_cpu(
                        &[&upstream],
                        http_loops(&sessions, case.inflight, &make, window),
                    )
                    .await;
                    let m = measured(stats?, &window)?;
                    series.upstream_cpu.push(m.per_call(cpu[0]));
                    straight = Some(m);
                } else {
                    let (result, cpu) = with_cpu(
                        &[&gateway],
                        ws_loops(
                            std::mem::take(&mut sockets),
                            Some("fast"),
                            case.inflight,
                            &make,
                            window,
                        ),
                    )
                    .await;
                    let (stats, back) = result?;
                    sockets = back;
                    let m = measured(stats, &window)?;
                    series.gateway_cpu.push(m.per_call(cpu[0]));
                    via = Some(m);
                }
            }
            series.push(straight.context("direct")?, via.context("mcpmux")?);
        }
        let label = case.label.replace("many", &many.to_string());
        report.add(
            "b",
            format!("{label}: direct"),
            "calls/s",
            series.direct_rate.clone(),
            None,
        );
        report.add(
            "b",
            format!("{label}: through mcpmux"),
            "calls/s",
            series.gateway_rate.clone(),
            None,
        );
        report.add(
            "b",
            format!("{label}: mcpmux / direct"),
            "x",
            series.ratio.clone(),
            case.goal.map(Goal::AtLeast),
        );
        if case.bytes.is_some() {
            report.add(
                "b",
                format!("{label}: direct"),
                "MB/s",
                series.direct_bytes.clone(),
                None,
            );
            report.add(
                "b",
                format!("{label}: through mcpmux"),
                "MB/s",
                series.gateway_bytes.clone(),
                None,
            );
        }
        report.add(
            "b",
            format!("{label}: through mcpmux p50"),
            "ms",
            series.gateway_p50.clone(),
            None,
        );
        report.add(
            "b",
            format!("{label}: through mcpmux p99"),
            "ms",
            series.gateway_p99.clone(),
            None,
        );
        let cpu_goal = case.bytes.is_none().then_some(Goal::AtMost(20.0));
        report.add(
            "b",
            format!("{label}: gateway CPU per call"),
            "us",
            series.gateway_cpu,
            cpu_goal,
        );
        report.add(
            "b",
            format!("{label}: upstream CPU per call (direct)"),
            "us",
            series.upstream_cpu,
            None,
        );
        drop(sockets);
    }
    report.note(
        "b",
        "the fast upstream is `mcpmux-bench upstream` (Rust, JSON replies), in its own process",
    );
    drop((gateway, upstream));
    Ok(())
}

/// One side's clients of the fan-out.
enum FanoutClients {
    Gateway(Vec<Ws>),
    Direct(Vec<HttpEvents>),
}

impl FanoutClients {
    /// Reads `expect` notifications on every client at once.
    async fn read(self, expect: u64) -> anyhow::Result<(Delivery, Self)> {
        let mut delivery = Delivery::default();
        match self {
            FanoutClients::Gateway(sockets) => {
                let tasks: Vec<_> = sockets
                    .into_iter()
                    .map(|mut ws| {
                        tokio::spawn(async move {
                            let d = load::ws_read_notifications(&mut ws, expect).await?;
                            anyhow::Ok((d, ws))
                        })
                    })
                    .collect();
                let mut back = Vec::new();
                for task in tasks {
                    let (d, ws) = task.await??;
                    delivery.merge(d);
                    back.push(ws);
                }
                Ok((delivery, FanoutClients::Gateway(back)))
            }
            FanoutClients::Direct(streams) => {
                let tasks: Vec<_> = streams
                    .into_iter()
                    .map(|mut events| {
                        tokio::spawn(async move {
                            let d = events.read_notifications(expect).await?;
                            anyhow::Ok((d, events))
                        })
                    })
                    .collect();
                let mut back = Vec::new();
                for task in tasks {
                    let (d, events) = task.await??;
                    delivery.merge(d);
                    back.push(events);
                }
                Ok((delivery, FanoutClients::Direct(back)))
            }
        }
    }
}

/// One blast's figures.
struct Blasted {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_per_notification: f64,
}

/// What the upstream sends in one blast.
#[derive(Clone, Copy)]
struct Offer {
    per_client: u64,
    /// Notifications per second in all; 0 for as fast as they are taken.
    rate: f64,
    /// Padding bytes in each notification.
    pad: usize,
}

async fn blast(
    client: &reqwest::Client,
    upstream: SocketAddr,
    clients: FanoutClients,
    group: &str,
    offer: Offer,
    gateway: &Proc,
) -> anyhow::Result<(Blasted, FanoutClients)> {
    let Offer {
        per_client,
        rate,
        pad,
    } = offer;
    let count = match &clients {
        FanoutClients::Gateway(s) => s.len(),
        FanoutClients::Direct(s) => s.len(),
    };
    let readers = tokio::spawn(clients.read(per_client));
    let cpu_before = gateway.cpu_seconds();
    let start = Instant::now();
    let request = json!({"group": group, "per_stream": per_client, "rate": rate, "pad": pad});
    let answer = client
        .post(format!("http://{upstream}/blast"))
        .body(request.to_string())
        .send()
        .await?
        .text()
        .await?;
    let answer: serde_json::Value = serde_json::from_str(&answer)?;
    if answer["streams"].as_u64() != Some(count as u64) {
        bail!("the upstream blasted {answer} but {count} clients listen");
    }
    let (mut delivery, clients) = tokio::time::timeout(Duration::from_secs(120), readers)
        .await
        .context("fan-out readers stuck")???;
    let cpu = gateway.cpu_seconds() - cpu_before;
    let elapsed = delivery
        .last
        .map_or(f64::NAN, |last| (last - start).as_secs_f64());
    let received = delivery.received as f64;
    Ok((
        Blasted {
            rate: received / elapsed,
            p50: percentile(&mut delivery.latencies_us, 50.0) / 1000.0,
            p99: percentile(&mut delivery.latencies_us, 99.0) / 1000.0,
            cpu_per_notification: cpu / received * 1e6,
        },
        clients,
    ))
}

/// Scenario c: the fast upstream pushes notifications on the standalone streams of many
/// clients, through mcpmux and straight from the upstream.
pub async fn c_fanout(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let (upstream, upstream_addr) = procs::start_upstream()?;
    let url = format!("http://{upstream_addr}/mcp");
    let (gateway, addr) =
        procs::start_mcpmux(&ctx.mcpmux, &remote_config("fast", &url, json!({})))?;
    let client = load::http_client();
    let plan = &ctx.plan;
    let mut full = Series::default();
    let mut paced = Series::default();
    for round in 0..plan.rounds {
        let mut got: [Option<(Blasted, Blasted)>; 2] = [None, None];
        for side in order(round) {
            let group = format!("bench-c-{round}-{}", side == Side::Direct);
            let clients = if side == Side::Direct {
                let sessions: Vec<anyhow::Result<HttpEvents>> =
                    futures::stream::iter(0..plan.fanout_clients)
                        .map(|_| {
                            let (client, url, group) = (client.clone(), url.clone(), group.clone());
                            async move {
                                HttpSession::initialize(&client, &url, None, &group)
                                    .await?
                                    .event_stream()
                                    .await
                            }
                        })
                        .buffer_unordered(32)
                        .collect()
                        .await;
                FanoutClients::Direct(sessions.into_iter().collect::<anyhow::Result<_>>()?)
            } else {
                FanoutClients::Gateway(
                    mcpmux_sockets(addr, "fast", plan.fanout_clients, &group).await?,
                )
            };
            let full = Offer {
                per_client: plan.fanout_per_client,
                rate: 0.0,
                pad: 0,
            };
            let (at_full, clients) =
                blast(&client, upstream_addr, clients, &group, full, &gateway).await?;
            let paced = Offer {
                rate: plan.fanout_rate,
                ..full
            };
            let (at_rate, clients) =
                blast(&client, upstream_addr, clients, &group, paced, &gateway).await?;
            drop(clients);
            got[usize::from(side == Side::Gateway)] = Some((at_full, at_rate));
        }
        let [
            Some((direct_full, direct_paced)),
            Some((via_full, via_paced)),
        ] = got
        else {
            bail!("a side did not run");
        };
        full.ratio.push(via_full.rate / direct_full.rate);
        full.gateway_cpu.push(via_full.cpu_per_notification);
        paced.gateway_cpu.push(via_paced.cpu_per_notification);
        for (series, direct, via) in [
            (&mut full, direct_full, via_full),
            (&mut paced, direct_paced, via_paced),
        ] {
            series.direct_rate.push(direct.rate);
            series.gateway_rate.push(via.rate);
            series.direct_p50.push(direct.p50);
            series.direct_p99.push(direct.p99);
            series.gateway_p50.push(via.p50);
            series.gateway_p99.push(via.p99);
        }
    }
    let clients = plan.fanout_clients;
    let rate = plan.fanout_rate;
    let full_label = format!("{clients} clients, full speed");
    report.add(
        "c",
        format!("{full_label}: direct"),
        "notif/s",
        full.direct_rate,
        None,
    );
    report.add(
        "c",
        format!("{full_label}: through mcpmux"),
        "notif/s",
        full.gateway_rate,
        None,
    );
    report.add(
        "c",
        format!("{full_label}: mcpmux / direct"),
        "x",
        full.ratio,
        Some(Goal::AtLeast(0.8)),
    );
    report.add(
        "c",
        format!("{full_label}: direct p50"),
        "ms",
        full.direct_p50,
        None,
    );
    report.add(
        "c",
        format!("{full_label}: through mcpmux p50"),
        "ms",
        full.gateway_p50,
        None,
    );
    report.add(
        "c",
        format!("{full_label}: direct p99"),
        "ms",
        full.direct_p99,
        None,
    );
    report.add(
        "c",
        format!("{full_label}: through mcpmux p99"),
        "ms",
        full.gateway_p99,
        None,
    );
    report.add(
        "c",
        format!("{full_label}: gateway CPU per notification"),
        "us",
        full.gateway_cpu,
        None,
    );
    let paced_label = format!("{clients} clients, {rate:.0}/s offered");
    report.add(
        "c",
        format!("{paced_label}: direct"),
        "notif/s",
        paced.direct_rate,
        None,
    );
    report.add(
        "c",
        format!("{paced_label}: through mcpmux"),
        "notif/s",
        paced.gateway_rate,
        None,
    );
    report.add(
        "c",
        format!("{paced_label}: direct p50"),
        "ms",
        paced.direct_p50,
        None,
    );
    report.add(
        "c",
        format!("{paced_label}: direct p99"),
        "ms",
        paced.direct_p99,
        None,
    );
    report.add(
        "c",
        format!("{paced_label}: through mcpmux p50"),
        "ms",
        paced.gateway_p50,
        None,
    );
    report.add(
        "c",
        format!("{paced_label}: through mcpmux p99"),
        "ms",
        paced.gateway_p99,
        Some(Goal::AtMost(100.0)),
    );
    report.add(
        "c",
        format!("{paced_label}: gateway CPU per notification"),
        "us",
        paced.gateway_cpu,
        None,
    );
    report.note("c", format!("{} notifications per client per blast; delivery rate = received / (first send to last receipt); latency = upstream send time to client receipt", plan.fanout_per_client));
    drop((gateway, upstream));
    Ok(())
}

/// Scenario d: idle sockets after `hello`: resident memory per socket and sockets
/// accepted per second, a fresh mcpmux each round.
pub async fn d_idle(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let n = ctx.plan.idle_sockets;
    let (mut per_socket, mut accepted) = (Vec::new(), Vec::new());
    // Never contacted: idle clients send nothing upstream.
    let config = remote_config("idle", "http://127.0.0.1:9/mcp", json!({}));
    for _ in 0..ctx.plan.rounds.min(3) {
        let (gateway, addr) = procs::start_mcpmux(&ctx.mcpmux, &config)?;
        // Settle the runtime's threads and allocator before the baseline.
        drop(load::mcpmux_connect(addr).await?);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let baseline = gateway.rss_bytes();
        let start = Instant::now();
        let sockets: Vec<anyhow::Result<Ws>> = futures::stream::iter(0..n)
            .map(|_| load::mcpmux_connect(addr))
            .buffer_unordered(64)
            .collect()
            .await;
        let elapsed = start.elapsed().as_secs_f64();
        let sockets: Vec<Ws> = sockets.into_iter().collect::<anyhow::Result<_>>()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss = gateway.rss_bytes();
        per_socket.push((rss.saturating_sub(baseline)) as f64 / n as f64 / 1024.0);
        accepted.push(n as f64 / elapsed);
        drop(sockets);
        drop(gateway);
    }
    report.add(
        "d",
        format!("{n} idle sockets: resident memory per socket"),
        "KiB",
        per_socket,
        Some(Goal::AtMost(8.0)),
    );
    report.add(
        "d",
        format!("{n} idle sockets: accepted (connect + hello + welcome)"),
        "conn/s",
        accepted,
        Some(Goal::AtLeast(5000.0)),
    );
    report.note("d", "RSS of the mcpmux process (VmRSS) after every socket got its welcome, minus RSS before; 64 connects at a time");
    Ok(())
}

/// Scenario e: supergateway's WebSocket mode on server-everything beside mcpmux (with
/// its own supervised mcp-proxy) on the same server, same echo load.
pub async fn e_peer(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let (peer, peer_addr) = procs::start_supergateway(&ctx.root).await?;
    let server = ctx
        .root
        .join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    let proxy = ctx
        .root
        .join("node_modules/mcp-proxy/dist/bin/mcp-proxy.mjs");
    let config = json!({
        "mcpServers": { "everything": { "command": "node", "args": [server, "stdio"] } },
        "gateway": { "mcpProxy": ["node", proxy] }
    });
    let (gateway, addr) = procs::start_mcpmux(&ctx.mcpmux, &config)?;
    let mut via = load::mcpmux_connect(addr).await?;
    load::ws_initialize(&mut via, Some("everything"), "bench-e").await?;
    let mut other = load::ws_connect(&format!("ws://{peer_addr}/message")).await?;
    load::ws_initialize(&mut other, None, "bench-e").await?;
    let make = load::echo_request(None);
    let (mut via_id, mut other_id) = (0, 0);
    for inflight in [1usize, 16] {
        let mut series = Series::default();
        let mut peer_cpu = Vec::new();
        for round in 0..ctx.plan.rounds {
            let (mut peer_m, mut via_m) = (None, None);
            for side in order(round) {
                let window = ctx.window();
                if side == Side::Direct {
                    let (stats, cpu) = with_cpu(&[&peer], async {
                        load::ws_closed_loop(
                            &mut other,
                            None,
                            inflight,
                            &make,
                            window,
                            &mut other_id,
                        )
                        .await
                    })
                    .await;
                    let m = measured(stats?, &window)?;
                    peer_cpu.push(m.per_call(cpu[0]));
                    peer_m = Some(m);
                } else {
                    let (stats, cpu) = with_cpu(&[&gateway], async {
                        load::ws_closed_loop(
                            &mut via,
                            Some("everything"),
                            inflight,
                            &make,
                            window,
                            &mut via_id,
                        )
                        .await
                    })
                    .await;
                    let m = measured(stats?, &window)?;
                    series.gateway_cpu.push(m.per_call(cpu[0]));
                    via_m = Some(m);
                }
            }
            series.push(peer_m.context("supergateway")?, via_m.context("mcpmux")?);
        }
        let label = format!("echo, {inflight} in flight");
        report.add(
            "e",
            format!("{label}: supergateway"),
            "calls/s",
            series.direct_rate,
            None,
        );
        report.add(
            "e",
            format!("{label}: mcpmux"),
            "calls/s",
            series.gateway_rate,
            None,
        );
        report.add(
            "e",
            format!("{label}: mcpmux / supergateway"),
            "x",
            series.ratio,
            None,
        );
        report.add(
            "e",
            format!("{label}: supergateway p50"),
            "ms",
            series.direct_p50,
            None,
        );
        report.add(
            "e",
            format!("{label}: mcpmux p50"),
            "ms",
            series.gateway_p50,
            None,
        );
        report.add(
            "e",
            format!("{label}: supergateway CPU per call"),
            "us",
            peer_cpu,
            None,
        );
        report.add(
            "e",
            format!("{label}: mcpmux CPU per call"),
            "us",
            series.gateway_cpu,
            None,
        );
    }
    report.note("e", "supergateway 4.0.0 skips mcp-proxy by design: its WebSocket mode pipes every socket into one stdio child; mcpmux goes through its supervised mcp-proxy (CPU figures are each gateway process alone)");
    drop((gateway, peer));
    Ok(())
}

/// Scenario f: the memory a gateway keeps for resume when clients never ack: many
/// connected clients each receive some frames; the gateway's RSS with the default
/// `resumeBudgetBytes`, and with the budget lifted (each session then keeps up to its
/// own `resumeMaxBytes`).
pub async fn f_kept_for_resume(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let (upstream, upstream_addr) = procs::start_upstream()?;
    let url = format!("http://{upstream_addr}/mcp");
    let client = load::http_client();
    let plan = &ctx.plan;
    let (clients, per_client) = (plan.kept_clients, plan.kept_bytes_per_client);
    // Notifications of about 16 KiB each, paced so that clients keep up: what stays
    // is what is kept for resume, not a burst's queues.
    let offer = Offer {
        per_client: (per_client / (16 << 10)).max(1) as u64,
        rate: plan.kept_rate,
        pad: (16 << 10) - 200,
    };
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    for (label, budget) in [
        ("default resumeBudgetBytes", None),
        ("budget lifted", Some(u64::from(u32::MAX))),
    ] {
        let mut config = remote_config("fast", &url, json!({}));
        if let Some(budget) = budget {
            config["gateway"]["resumeBudgetBytes"] = json!(budget);
        }
        let (gateway, addr) = procs::start_mcpmux(&ctx.mcpmux, &config)?;
        let group = format!("bench-f-{}", budget.is_some());
        let sockets = mcpmux_sockets(addr, "fast", clients, &group).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let connected = gateway.rss_bytes();
        let (_, sockets) = blast(
            &client,
            upstream_addr,
            FanoutClients::Gateway(sockets),
            &group,
            offer,
            &gateway,
        )
        .await?;
        // Let the allocator return what the burst left free.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = gateway.rss_bytes();
        let each = per_client >> 10;
        report.add(
            "f",
            format!("{clients} clients, {label}: RSS connected"),
            "MiB",
            vec![mib(connected)],
            None,
        );
        report.add(
            "f",
            format!("{clients} clients, {label}: RSS after {each} KiB each, never acked"),
            "MiB",
            vec![mib(after)],
            None,
        );
        drop(sockets);
        drop(gateway);
    }
    report.note("f", format!("RSS of the mcpmux process; clients read every frame and never ack; notifications of 16 KiB at {:.0}/s in all; default resumeMaxBytes (8 MiB per session)", plan.kept_rate));
    drop(upstream);
    Ok(())
}

/// Scenario g: what writing every frame to the Redis session store costs. Echo calls
/// (one response frame each) on the fast upstream through two mcpmux processes, one
/// without a store and one with `gateway.store.redis` (a redis-server the bench starts),
/// in the same rounds.
pub async fn g_session_store(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let (upstream, upstream_addr) = procs::start_upstream()?;
    let (redis, redis_url) = procs::start_redis()?;
    let url = format!("http://{upstream_addr}/mcp");
    let plain = remote_config("fast", &url, json!({}));
    let mut stored = plain.clone();
    stored["gateway"]["store"] = json!({"redis": redis_url});
    let (memory_gateway, memory_addr) = procs::start_mcpmux(&ctx.mcpmux, &plain)?;
    let (redis_gateway, redis_addr) = procs::start_mcpmux(&ctx.mcpmux, &stored)?;
    let sockets = if ctx.plan.smoke { 2 } else { 16 };
    let inflight = 4;
    let make = load::echo_request(None);
    let mut memory_sockets = mcpmux_sockets(memory_addr, "fast", sockets, "bench-g").await?;
    let mut redis_sockets = mcpmux_sockets(redis_addr, "fast", sockets, "bench-g").await?;
    let (mut rates, mut cpus) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let mut redis_cpu = Vec::new();
    for round in 0..ctx.plan.rounds {
        for side in order(round) {
            let window = ctx.window();
            let (index, gateway, socks) = match side {
                Side::Direct => (0, &memory_gateway, &mut memory_sockets),
                Side::Gateway => (1, &redis_gateway, &mut redis_sockets),
            };
            let (result, cpu) = with_cpu(
                &[gateway, &redis],
                ws_loops(std::mem::take(socks), Some("fast"), inflight, &make, window),
            )
            .await;
            let (stats, back) = result?;
            *socks = back;
            let m = measured(stats, &window)?;
            rates[index].push(m.rate);
            cpus[index].push(m.per_call(cpu[0]));
            if index == 1 {
                redis_cpu.push(m.per_call(cpu[1]));
            }
        }
    }
    let label = format!("echo, {sockets} sockets x {inflight} in flight");
    for (index, side) in [(0, "no store"), (1, "Redis store")] {
        report.add(
            "g",
            format!("{label}, {side}"),
            "frames/s",
            rates[index].clone(),
            None,
        );
        report.add(
            "g",
            format!("{label}, {side}: gateway CPU per frame"),
            "us",
            cpus[index].clone(),
            None,
        );
    }
    report.add(
        "g",
        format!("{label}: gateway CPU added per frame by the store"),
        "us",
        diff(&cpus[1], &cpus[0]),
        None,
    );
    report.add(
        "g",
        format!("{label}: redis-server CPU per frame"),
        "us",
        redis_cpu,
        None,
    );
    report.note("g", "one response frame per call; with the store each frame is in Redis (XADD, pipelined per session) before it is written to its socket");
    drop((memory_sockets, redis_sockets));
    drop((memory_gateway, redis_gateway, redis, upstream));
    Ok(())
}
