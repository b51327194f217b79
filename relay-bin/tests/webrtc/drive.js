#!/usr/bin/env node
// Drives headless Chromium for relay-bin/tests/webrtc.rs: opens page.html
// from disk and runs its runTest(config) with the JSON config given as the
// only argument:
//
//   {"chromium": "/usr/bin/chromium", "userDataDir": "/tmp/...",
//    "chromiumArgs": ["--ignore-certificate-errors"],
//    "iceServers": [{"urls": "turn:10.203.1.1:3478?transport=udp",
//                    "username": "test", "credential": "pass"}],
//    "relayProtocol": "udp", "stepTimeoutMs": 30000, "timeoutMs": 60000,
//    "messages": 3000, "bulkBytes": 4194304}
//
// (messages and bulkBytes are optional: the page's defaults, as above.)
//
// Prints the result as `key=value` lines (what webrtc.rs checks) after a
// `RESULT {json}` line, and exits 0 when the page says it passed, 1 when it
// did not, 2 when the browser or the page could not be run at all. Every
// step is bounded by timeoutMs; the browser is closed before exiting.
'use strict';

const path = require('path');
const { chromium } = require('playwright-core');

const config = JSON.parse(process.argv[2] || '{}');
const timeoutMs = config.timeoutMs || 60000;
const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;

function flat(result) {
  const lines = [];
  for (const side of ['a', 'b']) {
    const p = result[side] || {};
    for (const key of ['found', 'how', 'state', 'local', 'remote', 'relayProtocol', 'localAddress', 'remoteAddress', 'localUrl', 'bytesSent', 'bytesReceived', 'rttMs']) {
      lines.push(`${side}.${key}=${p[key]}`);
    }
  }
  for (const key of ['ok', 'error', 'orderError', 'connectMs', 'messages', 'messagesMs', 'bulkBytes', 'bulkMs', 'bulkMbitPerS', 'shaSent', 'shaReceived', 'totalMs']) {
    lines.push(`${key}=${result[key]}`);
  }
  return lines.join('\n');
}

async function main() {
  let context;
  const watchdog = setTimeout(() => {
    console.error(`drive.js: no result within ${timeoutMs} ms, giving up`);
    process.exit(2);
  }, timeoutMs + 5000);
  try {
    context = await chromium.launchPersistentContext(config.userDataDir, {
      executablePath: config.chromium,
      headless: true,
      timeout: timeoutMs,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        ...(config.chromiumArgs || []),
      ],
    });
    console.error(`drive.js: ${elapsed()} Chromium ${context.browser() ? context.browser().version() : ''} started`);
    const page = context.pages()[0] || (await context.newPage());
    page.on('console', (msg) => console.error(`page console: ${msg.text()}`));
    page.on('pageerror', (err) => console.error(`page error: ${err}`));
    page.setDefaultTimeout(timeoutMs);
    await page.goto('file://' + path.join(__dirname, 'page.html'));
    const pageConfig = {
      iceServers: config.iceServers,
      relayProtocol: config.relayProtocol,
      stepTimeoutMs: config.stepTimeoutMs || 30000,
      messages: config.messages,
      bulkBytes: config.bulkBytes,
    };
    const result = await page.evaluate((c) => runTest(c), pageConfig);
    console.error(`drive.js: ${elapsed()} page finished`);
    console.log(`RESULT ${JSON.stringify(result)}`);
    console.log(flat(result));
    process.exitCode = result.ok ? 0 : 1;
  } catch (err) {
    console.error(`drive.js: ${elapsed()} ${err && err.stack ? err.stack : err}`);
    // Last, one line for webrtc.rs to quote.
    console.error(`drive.js: failed: ${String(err && err.message ? err.message : err).split('\n')[0]}`);
    process.exitCode = 2;
  } finally {
    if (context) await context.close().catch(() => {});
    clearTimeout(watchdog);
  }
}

main();
