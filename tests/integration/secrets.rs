//! Secrets stay secret: mcp-proxy's key is in its environment and in no process's
//! command line; stdio servers see only a minimal environment plus what their entry asks
//! for.

/// A variable of mcpmux's environment that no stdio server may see unless asked for.
const PRIVATE_VAR: &str = "MCPMUX_TEST_PRIVATE_TOKEN";

use std::time::Duration;

use serde_json::{Value, json};

use crate::binary::{Binary, Launch};
use crate::harness::{Client, config, everything, tool_text};

/// The NUL-separated fields of `/proc/PID/<file>` (`cmdline`, `environ`); empty when the
/// process is gone or not readable.
fn proc_fields(pid: u32, file: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|field| !field.is_empty())
        .map(|field| String::from_utf8_lossy(field).into_owned())
        .collect()
}

/// The value of `name` in the environment of `pid`.
fn env_of(pid: u32, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    proc_fields(pid, "environ")
        .into_iter()
        .find_map(|var| var.strip_prefix(&prefix).map(str::to_owned))
}

/// Every pid on the machine.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn the_mcp_proxy_key_is_in_its_environment_and_in_no_command_line() {
    let binary = Binary::start(&config(json!({"everything": everything()}), json!({})));
    let mut client = Client::connect(binary.addr).await;
    client.initialize("everything").await;
    let params = json!({"name": "echo", "arguments": {"message": "keyed"}});
    let echo = client
        .call("everything", json!(1), "tools/call", params)
        .await;
    assert_eq!(tool_text(&echo), "Echo: keyed", "{echo}");

    // mcp-proxy: the process whose command line names it and its port.
    let processes = binary.processes();
    let (proxy, port) = processes
        .iter()
        .find_map(|pid| {
            let args = proc_fields(*pid, "cmdline");
            let named = args.iter().any(|a| a.contains("mcp-proxy"));
            let port = args.iter().skip_while(|a| *a != "--port").nth(1)?;
            (named && !args.iter().any(|a| a == "guard")).then(|| (*pid, port.parse::<u16>()))
        })
        .expect("an mcp-proxy process among mcpmux's children");
    let port = port.expect("a numeric --port");
    let key = env_of(proxy, "MCP_PROXY_API_KEY").expect("mcp-proxy has its key in its environment");
    assert!(key.len() >= 32, "a random key: {key:?}");

    for pid in all_pids() {
        let args = proc_fields(pid, "cmdline");
        assert!(
            !args.iter().any(|a| a.contains(&key)),
            "process {pid} shows the key on its command line: {args:?}"
        );
    }
    for pid in processes {
        let args = proc_fields(pid, "cmdline");
        assert!(
            !args.iter().any(|a| a.contains("apiKey")),
            "process {pid} is given a key on its command line: {args:?}"
        );
    }

    // The key is in force: mcp-proxy refuses a request without it, takes one with it.
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    });
    let post = |key: Option<&str>| {
        let mut request = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .timeout(Duration::from_secs(10))
            .body(initialize.to_string());
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };
    assert_eq!(post(None).await.expect("answers").status(), 401);
    assert_eq!(post(Some(&key)).await.expect("answers").status(), 200);
}

/// server-everything's whole environment, from its `get-env` tool.
async fn server_env(client: &mut Client, server: &str) -> serde_json::Map<String, Value> {
    client.initialize(server).await;
    let params = json!({"name": "get-env", "arguments": {}});
    let reply = client
        .call(server, json!("env"), "tools/call", params)
        .await;
    serde_json::from_str(tool_text(&reply)).unwrap_or_else(|e| panic!("{e}: {reply}"))
}

#[tokio::test]
async fn stdio_servers_get_a_minimal_environment_and_what_their_entry_asks_for() {
    let mut asking = everything();
    asking["inheritEnv"] = json!([PRIVATE_VAR]);
    asking["env"] = json!({"SET_BY_ENTRY": "yes"});
    let servers = json!({"plain": everything(), "asking": asking});
    let launch = Launch {
        env: &[(PRIVATE_VAR, "private-value")],
        ..Launch::default()
    };
    let binary = Binary::launch(&config(servers, json!({})), launch);
    let mut client = Client::connect(binary.addr).await;

    let plain = server_env(&mut client, "plain").await;
    // The SDKs' minimal set, mcp-proxy's key, and the harness's marker (which the
    // harness has every entry inherit): nothing else.
    let allowed = [
        "HOME",
        "LOGNAME",
        "PATH",
        "SHELL",
        "TERM",
        "USER",
        "MCP_PROXY_API_KEY",
        "MCPMUX_TEST_MARK",
    ];
    let extra: Vec<&String> = plain
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "not in the minimal environment: {extra:?}"
    );
    assert_eq!(
        plain.get("PATH"),
        std::env::var("PATH").ok().map(Value::from).as_ref()
    );
    assert!(
        plain.contains_key("MCPMUX_TEST_MARK"),
        "inheritEnv is honoured"
    );

    let asking = server_env(&mut client, "asking").await;
    assert_eq!(asking[PRIVATE_VAR], "private-value");
    assert_eq!(asking["SET_BY_ENTRY"], "yes");
    assert!(!plain.contains_key(PRIVATE_VAR));
}
