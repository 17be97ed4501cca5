/**
 * The lines of the OpenAI Batch API, in and out: what makes an input line a request, and how a
 * line's outcome is written to the batch's output or error file. Pure functions, no I/O.
 *
 * Input: `{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body": {..., "model"}}`
 * per line. A line that is not one never becomes a job: it is written to the error file as
 * OpenAI writes a request that could not run, `{"id", "custom_id", "response": null, "error":
 * {"code", "message"}}`, and counts as failed; the batch goes on.
 *
 * Output: one line per request, `{"id", "custom_id", "response": {"status_code", "request_id",
 * "body"}, "error": null}`: an answer of 2xx goes to the output file, any other answer to the
 * error file (as OpenAI does: the request ran, its answer was an error). A line that never ran
 * (expired with the completion window, cancelled) goes to the error file with `response: null`
 * and an `error`. So every custom_id of the input appears exactly once across the two files.
 */
import type { JobRecord } from "./types.js";

export interface LineProblem {
  code: string;
  message: string;
  /** The field at fault, for the batch's `errors` list. */
  param: string | null;
}

export type CheckedLine =
  | { ok: true; customId: string; body: string }
  | { ok: false; customId: string | null; problem: LineProblem };

export interface LineRules {
  /** The batch's endpoint, e.g. /v1/chat/completions: every line's url must be it. */
  endpoint: string;
  /** Largest request body a line may carry (server.bodyLimit: the request it becomes must fit). */
  maxBodyBytes: number;
}

const problem = (code: string, message: string, param: string | null = null): LineProblem => ({
  code,
  message,
  param,
});

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * One input line checked against the batch's rules. `seen`: the custom_ids of the lines before
 * (a valid line's id is added to it); a repeated one is refused, as each must name one answer.
 */
export function checkLine(text: string, rules: LineRules, seen: Set<string>): CheckedLine {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return {
      ok: false,
      customId: null,
      problem: problem("invalid_json_line", "This line is not parseable as valid JSON."),
    };
  }
  if (!isObject(parsed)) {
    return {
      ok: false,
      customId: null,
      problem: problem("invalid_json_line", "This line is not a JSON object."),
    };
  }
  const customId = parsed.custom_id;
  if (typeof customId !== "string" || customId.length === 0) {
    return {
      ok: false,
      customId: null,
      problem: problem(
        "missing_required_parameter",
        "The line has no custom_id: give every request a unique non-empty string custom_id.",
        "custom_id",
      ),
    };
  }
  const refuse = (p: LineProblem): CheckedLine => ({ ok: false, customId, problem: p });
  if (seen.has(customId)) {
    return refuse(
      problem(
        "duplicate_custom_id",
        `The custom_id '${customId}' is a duplicate of an earlier line's: each request's custom_id must be unique within the batch.`,
        "custom_id",
      ),
    );
  }
  if (parsed.method !== "POST") {
    return refuse(
      problem(
        "invalid_method",
        `The method must be "POST", not ${JSON.stringify(parsed.method ?? null)}.`,
        "method",
      ),
    );
  }
  if (parsed.url !== rules.endpoint) {
    return refuse(
      problem(
        "mismatched_endpoint",
        `The url must be the batch's endpoint ${rules.endpoint}, not ${JSON.stringify(parsed.url ?? null)}.`,
        "url",
      ),
    );
  }
  const body = parsed.body;
  if (!isObject(body)) {
    return refuse(problem("invalid_body", "The body must be a JSON object: the request's body.", "body"));
  }
  if (typeof body.model !== "string" || body.model.length === 0) {
    return refuse(
      problem("missing_required_parameter", "The body has no model: name the model to run.", "body.model"),
    );
  }
  const bodyText = JSON.stringify(body);
  if (Buffer.byteLength(bodyText) > rules.maxBodyBytes) {
    return refuse(
      problem(
        "request_too_large",
        `The body exceeds ${rules.maxBodyBytes} bytes, the largest request the gateway accepts (server.bodyLimit).`,
        "body",
      ),
    );
  }
  seen.add(customId);
  return { ok: true, customId, body: bodyText };
}

/** The refusal for a line longer than any request could be (its text was not kept). */
export function oversizeLine(maxBodyBytes: number): CheckedLine {
  return {
    ok: false,
    customId: null,
    problem: problem(
      "request_too_large",
      `The line exceeds ${maxBodyBytes} bytes, the largest request the gateway accepts (server.bodyLimit).`,
    ),
  };
}

/** The error-file line of an input line that never became a request. */
export function invalidLine(id: string, customId: string | null, p: LineProblem): string {
  return `${JSON.stringify({
    id,
    custom_id: customId,
    response: null,
    error: { code: p.code, message: p.message },
  })}\n`;
}

/** Where a job's line goes: the output file, the error file, or nowhere yet (unfinished). */
export type LineFile = "output" | "error";

const NEVER_RAN: Record<"expired" | "cancelled", { code: string; message: string }> = {
  expired: {
    code: "batch_expired",
    message: "This request could not be executed before the completion window expired.",
  },
  cancelled: { code: "batch_cancelled", message: "This request was cancelled before it ran." },
};

/**
 * A batch job's line in its file, or undefined while it has not ended. `batchExpired`: the
 * batch's window passed, so the lines cancelled at its end are reported as expired.
 */
export function jobLine(job: JobRecord, batchExpired: boolean): { file: LineFile; line: string } | undefined {
  switch (job.state) {
    case "queued":
    case "running":
      return undefined;
    case "succeeded":
    case "failed": {
      const result = job.result;
      if (result === undefined) return undefined;
      const line = JSON.stringify({
        id: job.id,
        custom_id: job.customId ?? null,
        response: {
          status_code: result.status,
          request_id: result.headers["x-request-id"] ?? null,
          body: parseBody(result.body),
        },
        error: null,
      });
      return { file: job.state === "succeeded" ? "output" : "error", line: `${line}\n` };
    }
    case "expired":
    case "cancelled": {
      const error = NEVER_RAN[job.state === "cancelled" && !batchExpired ? "cancelled" : "expired"];
      const line = JSON.stringify({ id: job.id, custom_id: job.customId ?? null, response: null, error });
      return { file: "error", line: `${line}\n` };
    }
  }
}

/** The answer's body as JSON when it is (it always is from the OpenAI routes), else its text. */
function parseBody(body: string): unknown {
  try {
    return JSON.parse(body);
  } catch {
    return body;
  }
}

/** A line of an input file: its 0-based index in the file, its text (undefined when too long). */
export interface InputLine {
  index: number;
  text: string | undefined;
}

/**
 * The non-blank lines of a file read as chunks (a line may span chunks), each with its index in
 * the file. A line longer than maxLineBytes is yielded with no text, and its bytes are not kept:
 * one huge line cannot hold a file's worth of memory.
 */
export async function* inputLines(
  chunks: AsyncIterable<Buffer>,
  maxLineBytes: number,
): AsyncGenerator<InputLine> {
  let parts: Buffer[] = [];
  let length = 0;
  let oversize = false;
  let index = 0;
  const finish = (): InputLine | undefined => {
    const line = oversize ? { index, text: undefined } : lineOf(index, parts);
    parts = [];
    length = 0;
    oversize = false;
    index++;
    return line;
  };
  for await (const chunk of chunks) {
    let start = 0;
    while (start <= chunk.length) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl === -1 ? chunk.length : nl;
      if (!oversize && end > start) {
        length += end - start;
        if (length > maxLineBytes) {
          oversize = true;
          parts = [];
        } else parts.push(chunk.subarray(start, end));
      }
      if (nl === -1) break;
      const line = finish();
      if (line) yield line;
      start = nl + 1;
    }
  }
  if (oversize || length > 0) {
    const line = finish();
    if (line) yield line;
  }
}

/** The line's text, or undefined when it is blank (blank lines are no requests, and skipped). */
function lineOf(index: number, parts: Buffer[]): InputLine | undefined {
  if (parts.length === 0) return undefined;
  const text = (parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts)).toString("utf8");
  return text.trim().length === 0 ? undefined : { index, text };
}
