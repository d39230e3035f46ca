// Calls server-everything's echo tool through mcpmux.
//   node echo.mjs [ws://127.0.0.1:7300/ws] [message]
// MCPMUX_KEY, if set, is the gateway's API key.
import { connect } from "mcpmux";
import WebSocket from "ws"; // Node 22+ and browsers have a global WebSocket instead

const url = process.argv[2] ?? "ws://127.0.0.1:7300/ws";
const message = process.argv[3] ?? "hello from Node";

const mux = await connect(url, {
  WebSocket,
  token: process.env.MCPMUX_KEY,
  client: { name: "node-example", version: "1.0.0" },
});
try {
  const everything = mux.server("everything");
  const info = await everything.initialize();
  console.log(`connected to ${info.serverInfo.name} ${info.serverInfo.version}`);
  const result = await everything.request(
    "tools/call",
    { name: "echo", arguments: { message } },
    { timeout: 30_000 },
  );
  console.log(result.content[0].text);
} finally {
  await mux.close();
}
