/**
 * The OpenAI Files and Batch APIs, as the official SDKs call them: POST /v1/files (multipart,
 * purpose `batch`), GET/DELETE /v1/files/{id}, GET /v1/files/{id}/content, POST /v1/batches,
 * GET /v1/batches/{id}, POST /v1/batches/{id}/cancel and GET /v1/batches (cursor paging).
 *
 * Registered inside the scope of the API-key hook: the tenant is request.gw.tenant ("" when the
 * gateway runs without keys), and a file or batch of another tenant's answers 404 as an absent
 * one does. The multipart parser (@fastify/multipart, streaming) exists in this scope only, with
 * its own limit (batches.maxFileBytes) instead of server.bodyLimit; the upload is written to the
 * store a chunk at a time as it arrives (src/jobs/files.ts). The limits are read from the
 * request's config generation, so a reload changes them.
 *
 * The store: with `store: redis`, the store's Redis (files, batches and jobs shared by the
 * replicas) on a connection of its own, whose commands may take FILES_COMMAND_TIMEOUT_MS: a 1 MiB
 * chunk is not a limit check, would miss the 50 ms budget those get on a busy host, and on the
 * limits' connection would hold their small commands behind it. With `store: memory`, a memory
 * store of its own: the gateway's evicts its oldest blobs past a byte budget, as a cache may, and
 * a file's chunk must never be evicted.
 */
import { Readable } from "node:stream";
import fastifyMultipart from "@fastify/multipart";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { GatewayConfig } from "../config/schema.js";
import { errors, type GatewayError } from "../errors.js";
import { OPENAI_ROUTES } from "../proxy/routes.js";
import { MemoryStore } from "../store/memory-store.js";
import { createRedisStore } from "../store/redis-store.js";
import { type Store, StoreUnavailableError } from "../store/types.js";
import { Batches, COMPLETION_WINDOW, type CreateBatch, type FileObject } from "./batches.js";
import { FileGoneError, FileLimitError, FileStore, newFileId, type StoredFile } from "./files.js";
import type { JobQueue } from "./types.js";

export interface BatchRoutesOptions {
  /** The gateway's store section (see the header for the store made of it). */
  storeConfig: GatewayConfig["store"];
  /** Redis connection errors, for the log. */
  onStoreError?: (error: Error) => void;
  /** The jobs queue (made on first use). */
  queue: () => JobQueue;
  /** The config generation the request runs on. */
  config: (request: FastifyRequest) => GatewayConfig;
}

/** The deadline of one store command on the files' connection. */
const FILES_COMMAND_TIMEOUT_MS = 5000;

export function registerBatchRoutes(scope: FastifyInstance, options: BatchRoutesOptions): void {
  const storeConfig = options.storeConfig;
  const store: Store =
    storeConfig.type === "redis"
      ? createRedisStore(
          { ...storeConfig, commandTimeout: Math.max(storeConfig.commandTimeout, FILES_COMMAND_TIMEOUT_MS) },
          options.onStoreError === undefined ? {} : { onError: options.onStoreError },
        )
      : new MemoryStore({ maxBlobBytes: Number.POSITIVE_INFINITY });
  const files = new FileStore(store);
  const batches = new Batches(store, files, options.queue);
  const tenantOf = (request: FastifyRequest) => request.gw.tenant?.id ?? "";

  scope.register(async (app) => {
    app.addHook("onClose", () => store.close());
    await app.register(fastifyMultipart, { throwFileSizeLimit: false });

    app.post(
      "/v1/files",
      handle(async (request, reply) => {
        const limits = options.config(request).batches;
        if (!request.isMultipart()) {
          throw errors.invalidRequest(
            "POST /v1/files takes multipart/form-data with a `file` part and a `purpose` field.",
            "file",
          );
        }
        const fields = new Map<string, string>();
        let stored: StoredFile | undefined;
        let refusal: GatewayError | undefined;
        // Busboy stops reading a file part one byte past the limit and skips the rest of it, so an
        // upload over the limit is refused after its body was read: the client gets the 413 itself
        // rather than a connection closed under its upload.
        const parts = request.parts({ limits: { fileSize: limits.maxFileBytes + 1, files: 1, fields: 16 } });
        for await (const part of parts) {
          if (part.type === "field") {
            fields.set(part.fieldname, String(part.value));
            continue;
          }
          if (part.fieldname !== "file" || refusal !== undefined) {
            await drain(part.file);
            continue;
          }
          try {
            stored = await files.upload(
              {
                id: newFileId(),
                tenant: tenantOf(request),
                filename: part.filename || "upload.jsonl",
                purpose: "batch",
                ttlMs: limits.fileTtl,
                maxBytes: limits.maxFileBytes,
                maxLines: limits.maxLines,
              },
              part.file,
            );
          } catch (err) {
            if (!(err instanceof FileLimitError)) {
              // The rest of the upload was not read: the connection goes with the answer.
              reply.header("connection", "close");
              throw err;
            }
            refusal = err.limit === "bytes" ? errors.fileTooLarge(err.max) : errors.tooManyLines(err.max);
          }
        }
        const problem = refusal ?? uploadProblem(stored, fields);
        if (problem !== undefined) {
          if (stored) await files.delete(stored);
          throw problem;
        }
        // expires_after is not honoured: every file lives batches.fileTtl.
        const file = stored as StoredFile;
        return reply.send(fileObject(file));
      }),
    );

    app.get<{ Params: { id: string } }>(
      "/v1/files/:id",
      handle(async (request, reply) => {
        const tenant = tenantOf(request);
        const generated = await batches.generatedFile(tenant, request.params.id, { measure: true });
        if (generated) return reply.send(generated.object);
        return reply.send(fileObject(await ownFile(files, tenant, request.params.id)));
      }),
    );

    app.get<{ Params: { id: string } }>(
      "/v1/files/:id/content",
      handle(async (request, reply) => {
        const tenant = tenantOf(request);
        const generated = await batches.generatedFile(tenant, request.params.id, { measure: false });
        if (generated) {
          reply.header("content-type", "application/jsonl");
          if (generated.bytes !== undefined) reply.header("content-length", generated.bytes);
          return reply.send(await started(generated.content()));
        }
        const file = await ownFile(files, tenant, request.params.id);
        reply.header("content-type", "application/octet-stream");
        reply.header("content-length", file.bytes);
        return reply.send(await started(files.content(file)));
      }),
    );

    app.delete<{ Params: { id: string } }>(
      "/v1/files/:id",
      handle(async (request, reply) => {
        const tenant = tenantOf(request);
        const id = request.params.id;
        if (!(await batches.deleteGenerated(tenant, id)))
          await files.delete(await ownFile(files, tenant, id));
        return reply.send({ id, object: "file", deleted: true });
      }),
    );

    app.post(
      "/v1/batches",
      handle(async (request, reply) => {
        const config = options.config(request);
        if (!config.jobs.enabled) throw errors.batchesOff();
        const input = createParams(request.body);
        return reply.send(
          await batches.create(tenantOf(request), input, {
            maxLines: config.batches.maxLines,
            maxPerTenant: config.batches.maxPerTenant,
            retentionMs: config.batches.retention,
            maxBodyBytes: config.server.bodyLimit,
          }),
        );
      }),
    );

    app.get<{ Params: { id: string } }>(
      "/v1/batches/:id",
      handle(async (request, reply) => {
        return reply.send(await batches.retrieve(tenantOf(request), request.params.id));
      }),
    );

    app.post<{ Params: { id: string } }>(
      "/v1/batches/:id/cancel",
      handle(async (request, reply) => {
        return reply.send(await batches.cancel(tenantOf(request), request.params.id));
      }),
    );

    app.get<{ Querystring: Record<string, string | undefined> }>(
      "/v1/batches",
      handle(async (request, reply) => {
        const { after, limit } = request.query;
        const n = limit === undefined ? 20 : Number(limit);
        if (!Number.isInteger(n) || n < 1 || n > 100) {
          throw errors.invalidRequest("limit must be an integer from 1 to 100.", "limit");
        }
        return reply.send(await batches.list(tenantOf(request), after, n));
      }),
    );
  });
}

type Handler<R extends FastifyRequest> = (request: R, reply: FastifyReply) => Promise<FastifyReply>;

/** The store failing is a 503 to retry; a file found short is a 500 that says so. */
function handle<R extends FastifyRequest>(work: Handler<R>): Handler<R> {
  return async (request, reply) => {
    try {
      return await work(request, reply);
    } catch (err) {
      if (err instanceof StoreUnavailableError) throw errors.storageUnavailable().causedBy(err);
      if (err instanceof FileGoneError) throw errors.internal().causedBy(err);
      throw err;
    }
  };
}

/**
 * The stream of `pieces` once its first piece is read: a failure before any byte is sent is
 * still answered with its own status (a 503 the client may retry); one after that breaks the
 * response off, so a short file never passes for a whole one.
 */
async function started(pieces: AsyncGenerator<Buffer>): Promise<Readable> {
  const first = await pieces.next();
  return Readable.from(
    (async function* () {
      if (first.done === true) return;
      yield first.value;
      yield* pieces;
    })(),
    { objectMode: false },
  );
}

/** Reads a stream to its end, keeping nothing. */
async function drain(stream: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of stream) {
    // discarded
  }
}

function uploadProblem(
  stored: StoredFile | undefined,
  fields: Map<string, string>,
): GatewayError | undefined {
  const purpose = fields.get("purpose");
  if (purpose === undefined)
    return errors.invalidRequest("The upload has no `purpose` field: send purpose=batch.", "purpose");
  if (purpose !== "batch") {
    return errors.invalidRequest(
      `The purpose '${purpose}' is not supported here: this gateway stores files for batches only (purpose=batch).`,
      "purpose",
    );
  }
  if (stored === undefined) return errors.invalidRequest("The upload has no `file` part.", "file");
  return undefined;
}

async function ownFile(files: FileStore, tenant: string, id: string): Promise<StoredFile> {
  const file = /^file-[0-9a-f]{32}$/.test(id) ? await files.get(id) : undefined;
  if (file === undefined || file.tenant !== tenant || file.purpose !== "batch") throw errors.fileNotFound(id);
  return file;
}

function fileObject(file: StoredFile): FileObject {
  return {
    id: file.id,
    object: "file",
    bytes: file.bytes,
    created_at: Math.floor(file.createdAt / 1000),
    expires_at: Math.floor(file.expiresAt / 1000),
    filename: file.filename,
    purpose: file.purpose,
    status: "processed",
    status_details: null,
  };
}

const METADATA_KEYS = 16;

/** POST /v1/batches's body, checked as OpenAI checks it. */
function createParams(body: unknown): CreateBatch {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw errors.invalidRequest("The body must be a JSON object.");
  }
  const b = body as Record<string, unknown>;
  if (typeof b.input_file_id !== "string" || b.input_file_id.length === 0) {
    throw errors.invalidRequest(
      "input_file_id is required: the id of a file uploaded with purpose=batch.",
      "input_file_id",
    );
  }
  if (typeof b.endpoint !== "string" || !(OPENAI_ROUTES as readonly string[]).includes(b.endpoint)) {
    throw errors.invalidRequest(
      `endpoint must be one of ${OPENAI_ROUTES.join(", ")}, not ${JSON.stringify(b.endpoint ?? null)}.`,
      "endpoint",
    );
  }
  if (b.completion_window !== COMPLETION_WINDOW) {
    throw errors.invalidRequest(
      `completion_window must be "${COMPLETION_WINDOW}", not ${JSON.stringify(b.completion_window ?? null)}.`,
      "completion_window",
    );
  }
  return { inputFileId: b.input_file_id, endpoint: b.endpoint, metadata: metadataOf(b.metadata) };
}

function metadataOf(value: unknown): Record<string, string> | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== "object" || Array.isArray(value)) {
    throw errors.invalidRequest("metadata must be an object of strings.", "metadata");
  }
  const entries = Object.entries(value as Record<string, unknown>);
  if (entries.length > METADATA_KEYS) {
    throw errors.invalidRequest(`metadata holds at most ${METADATA_KEYS} keys.`, "metadata");
  }
  for (const [key, v] of entries) {
    if (key.length > 64 || typeof v !== "string" || v.length > 512) {
      throw errors.invalidRequest(
        "metadata keys are at most 64 characters and values strings of at most 512.",
        "metadata",
      );
    }
  }
  return Object.fromEntries(entries) as Record<string, string>;
}
