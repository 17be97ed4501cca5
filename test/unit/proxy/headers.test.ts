import { describe, expect, it } from "vitest";
import { downstreamResponseHeaders, upstreamRequestHeaders } from "../../../src/proxy/headers.js";
import { passThroughPath } from "../../../src/proxy/pass-through.js";

describe("upstreamRequestHeaders", () => {
  const base = { requestId: "r1", clientIp: "10.1.1.1", stripAuthorization: false, extra: [] };

  it("drops hop-by-hop headers, those named in Connection, and Host", () => {
    const out = upstreamRequestHeaders(
      {
        host: "evil",
        connection: "keep-alive, X-Secret",
        "x-secret": "s",
        "keep-alive": "timeout=5",
        te: "trailers",
        "transfer-encoding": "chunked",
        upgrade: "websocket",
        "proxy-authorization": "Basic x",
        "content-type": "application/json",
        "content-length": "999",
      },
      { ...base, contentLength: 12 },
    );
    expect(out).toEqual({
      "content-type": "application/json",
      "content-length": "12",
      "x-forwarded-for": "10.1.1.1",
      "x-request-id": "r1",
    });
  });

  it("strips credentials the gateway consumed, appends to X-Forwarded-For, applies config headers last", () => {
    const out = upstreamRequestHeaders(
      { authorization: "Bearer k", "x-api-key": "k", "x-forwarded-for": "1.2.3.4", "x-keep": "1" },
      { ...base, stripAuthorization: true, extra: [["authorization", "Bearer backend"]] },
    );
    expect(out).toEqual({
      authorization: "Bearer backend",
      "x-forwarded-for": "1.2.3.4, 10.1.1.1",
      "x-request-id": "r1",
      "x-keep": "1",
    });
  });
});

describe("downstreamResponseHeaders", () => {
  it("drops hop-by-hop and Connection-named headers, and framing unless asked to keep it", () => {
    const upstream = {
      connection: "x-hop",
      "x-hop": "1",
      "transfer-encoding": "chunked",
      "content-length": "5",
      "content-type": "text/event-stream",
    };
    expect(downstreamResponseHeaders(upstream, false)).toEqual({ "content-type": "text/event-stream" });
    expect(downstreamResponseHeaders(upstream, true)).toEqual({
      "content-type": "text/event-stream",
      "content-length": "5",
    });
  });
});

describe("passThroughPath", () => {
  it.each([
    ["/tokenize", "/tokenize", false, "/tokenize"],
    ["/tokenize/a/b?x=1", "/tokenize", false, "/tokenize/a/b?x=1"],
    ["/tokenize/a/./b/../c", "/tokenize", false, "/tokenize/a/c"],
    ["/extras/health", "/extras", true, "/health"],
    ["/extras", "/extras", true, "/"],
    ["//tokenize/x", "/tokenize", false, "/tokenize/x"],
  ])("%s under %s (strip %s) → %s", (url, prefix, strip, expected) => {
    expect(passThroughPath(url, prefix, strip)).toBe(expected);
  });

  it.each([
    "/tokenize/../admin",
    "/tokenize/%2e%2e/admin",
    "/tokenize/..%2fadmin/../../x",
    "http://evil/tokenize",
  ])("refuses %s", (url) => expect(() => passThroughPath(url, "/tokenize", false)).toThrow());
});
