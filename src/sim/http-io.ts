/**
 * Small node:http helpers: bounded JSON bodies and OpenAI-shaped JSON answers.
 */

import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";

export const MAX_BODY_BYTES = 32 * 1024 * 1024;

export interface OpenAIErrorSpec {
  status: number;
  message: string;
  type: string;
  code: string | null;
  param?: string | null;
}

export type BodyResult = { ok: true; value: unknown } | { ok: false; error: OpenAIErrorSpec };

export function readJsonBody(req: IncomingMessage, limit = MAX_BODY_BYTES): Promise<BodyResult> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on("data", (chunk: Buffer) => {
      if (tooLarge) return;
      size += chunk.length;
      if (size > limit) {
        tooLarge = true;
        chunks.length = 0;
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => {
      if (tooLarge) {
        resolve({
          ok: false,
          error: {
            status: 413,
            message: `request body exceeds ${limit} bytes`,
            type: "invalid_request_error",
            code: "request_too_large",
          },
        });
        return;
      }
      const text = Buffer.concat(chunks, size).toString("utf8");
      try {
        resolve({ ok: true, value: JSON.parse(text) as unknown });
      } catch (err) {
        const detail = err instanceof Error ? err.message : String(err);
        resolve({
          ok: false,
          error: {
            status: 400,
            message: `request body is not valid JSON: ${detail}`,
            type: "invalid_request_error",
            code: "invalid_json",
          },
        });
      }
    });
    // A client that goes away mid-body never sends "end"; the response's close handler deals with it.
    req.on("error", () => {});
  });
}

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: OutgoingHttpHeaders = {},
): void {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    "content-type": "application/json",
    "content-length": Buffer.byteLength(payload),
  });
  res.end(payload);
}

export function openAIErrorBody(spec: OpenAIErrorSpec): unknown {
  const { message, type, code, param } = spec;
  return { error: param === undefined ? { message, type, code } : { message, type, param, code } };
}

export function sendError(
  res: ServerResponse,
  spec: OpenAIErrorSpec,
  headers: OutgoingHttpHeaders = {},
): void {
  sendJson(res, spec.status, openAIErrorBody(spec), headers);
}
