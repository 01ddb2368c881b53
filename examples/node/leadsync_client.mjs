// leadsync's HTTP ingestion API from Node 18+ (global fetch), no packages.
//
//   LEADSYNC_API_URL=http://127.0.0.1:8080 LEADSYNC_API_KEY=lsk_... \
//     node examples/node/leadsync_client.mjs ann@example.com FirstName=Ann Company=Acme
//
// With no arguments it upserts the seed's first lead (em1000@etestd.marketo.net).
// It prints "request_id: <id>", then the final outcome as one line of JSON.
// Optional: LEADSYNC_IDEMPOTENCY_KEY (default: a random one, reused by every retry of the
// POST) and LEADSYNC_WAIT_S (how long to wait for a final outcome, default 60).
// Exit status: 0 CREATED or UPDATED; 1 the API refused the request or could not be
// reached (the field messages go to stderr); 2 usage; 3 the lead FAILED (or was
// dead-lettered); 4 still PENDING when LEADSYNC_WAIT_S ran out.
//
// As a module: import { LeadsyncClient } from "./leadsync_client.mjs".

import { randomUUID } from "node:crypto";
import { pathToFileURL } from "node:url";

const RETRY_STATUSES = new Set([429, 503]);
const WAIT_CAP_S = 60;

const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));
const backoff = (attempt) => Math.min(0.5 * 2 ** (attempt - 1), 8);

/** The API refused a request (status and its field errors), or could not be reached (status 0). */
export class LeadsyncError extends Error {
  constructor(message, { status = 0, errors = [] } = {}) {
    super(message);
    this.name = "LeadsyncError";
    this.status = status;
    this.errors = errors;
  }
}

/** Retry-After is seconds or an HTTP date. */
function retryAfter(value) {
  if (value == null) return null;
  if (/^\s*\d+(\.\d+)?\s*$/.test(value)) return Math.max(0, Number(value));
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, (at - Date.now()) / 1000);
}

export class LeadsyncClient {
  constructor(baseUrl, apiKey, { timeoutS = 10, maxAttempts = 6 } = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.apiKey = apiKey;
    this.timeoutS = timeoutS;
    this.maxAttempts = maxAttempts;
  }

  /**
   * Enqueue one upsert; resolves to its request id. Retries on 429 and 503 (waiting as
   * Retry-After says) and on network errors, always with the same Idempotency-Key, so a
   * retried POST never enqueues twice.
   */
  async upsert(lead, { idempotencyKey = randomUUID() } = {}) {
    const answer = await this.#call("POST", "/v1/leads", lead, { "Idempotency-Key": idempotencyKey });
    return answer.request_id;
  }

  /** The outcome of a request: request_id, status, lead_id, error, error_code, ... */
  outcome(requestId) {
    return this.#call("GET", `/v1/leads/${encodeURIComponent(requestId)}`);
  }

  /** Poll until the outcome is final (not PENDING) or timeoutS passes: the last one read. */
  async waitOutcome(requestId, { timeoutS = 60 } = {}) {
    const deadline = performance.now() / 1000 + timeoutS;
    let pause = 0.2;
    for (;;) {
      const current = await this.outcome(requestId);
      if (current.status !== "PENDING" || performance.now() / 1000 + pause > deadline) return current;
      await sleep(pause);
      pause = Math.min(pause * 1.5, 2);
    }
  }

  /** One API call with its retries; the decoded JSON answer of a 2xx. */
  async #call(method, path, body = undefined, headers = {}) {
    for (let attempt = 1; ; attempt++) {
      let response;
      try {
        response = await fetch(this.baseUrl + path, {
          method,
          headers: {
            Authorization: `Bearer ${this.apiKey}`,
            Accept: "application/json",
            ...(body === undefined ? {} : { "Content-Type": "application/json" }),
            ...headers,
          },
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: AbortSignal.timeout(this.timeoutS * 1000),
        });
      } catch (error) {
        const cause = error.cause?.message ?? error.message;
        if (attempt >= this.maxAttempts) throw new LeadsyncError(`${method} ${path}: ${cause}`);
        await sleep(backoff(attempt)); // network error: same key, again
        continue;
      }
      let answer = {};
      try {
        answer = await response.json();
      } catch {
        // not JSON: keep {}
      }
      if (response.ok) return answer;
      if (RETRY_STATUSES.has(response.status) && attempt < this.maxAttempts) {
        await sleep(Math.min(retryAfter(response.headers.get("Retry-After")) ?? backoff(attempt), WAIT_CAP_S));
        continue;
      }
      const errors = Array.isArray(answer?.errors) ? answer.errors : [];
      const text = errors.map((e) => [e.field, e.message].filter(Boolean).join(": ")).join("; ");
      throw new LeadsyncError(`${method} ${path}: HTTP ${response.status} ${text}`.trim(), {
        status: response.status,
        errors,
      });
    }
  }
}

async function main(argv) {
  const url = process.env.LEADSYNC_API_URL;
  const key = process.env.LEADSYNC_API_KEY;
  if (!url || !key) {
    console.error("usage: LEADSYNC_API_URL=... LEADSYNC_API_KEY=... node leadsync_client.mjs [EMAIL [Name=Value ...]]");
    return 2;
  }
  let lead;
  if (argv.length === 0) {
    // the seed's first lead
    lead = { email: "em1000@etestd.marketo.net", attributes: { Company: "Marketo1000", Phone: "650-555-1000" } };
  } else {
    const [email, ...pairs] = argv;
    const bad = pairs.find((pair) => !pair.includes("="));
    if (bad !== undefined) {
      console.error(`not Name=Value: ${bad}`);
      return 2;
    }
    const attributes = Object.fromEntries(pairs.map((pair) => [pair.slice(0, pair.indexOf("=")), pair.slice(pair.indexOf("=") + 1)]));
    lead = { email, attributes };
  }
  const client = new LeadsyncClient(url, key);
  let outcome;
  try {
    const requestId = await client.upsert(lead, { idempotencyKey: process.env.LEADSYNC_IDEMPOTENCY_KEY || randomUUID() });
    console.log(`request_id: ${requestId}`);
    outcome = await client.waitOutcome(requestId, { timeoutS: Number(process.env.LEADSYNC_WAIT_S || 60) });
  } catch (error) {
    if (!(error instanceof LeadsyncError)) throw error;
    console.error(`leadsync: ${error.message}`);
    return 1;
  }
  console.log(JSON.stringify(outcome));
  if (outcome.status === "CREATED" || outcome.status === "UPDATED") return 0;
  return outcome.status === "PENDING" ? 4 : 3;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await main(process.argv.slice(2));
}
