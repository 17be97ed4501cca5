import { describe, expect, it } from "vitest";
import { ClientLeft, type PathProgress, RequestPath, type Stage } from "../../../src/stages/stage.js";

interface State extends PathProgress {
  answer: string | undefined;
  log: string[];
}

const state = (): State => ({
  entered: 0,
  running: false,
  closed: false,
  unwound: false,
  answer: undefined,
  log: [],
});

function stage(
  name: string,
  behaviour: Partial<Pick<Stage<State, string>, "enter">> = {},
): Stage<State, string> {
  return {
    name,
    enter: behaviour.enter ?? ((s) => void s.log.push(`enter ${name}`)),
    answered: (s) => void s.log.push(`answered ${name}`),
    leave: (s) => void s.log.push(`leave ${name}`),
  };
}

function path(stages: Stage<State, string>[], abandoned: string[] = []) {
  return new RequestPath<State, string>(stages, {
    leaveFailed: (name, err) => {
      throw new Error(`${name}: ${String(err)}`);
    },
    abandoned: (a) => void abandoned.push(a),
  });
}

const answering = (name: string, answer: string) =>
  stage(name, {
    enter: (s) => {
      s.log.push(`enter ${name}`);
      return answer;
    },
  });

describe("RequestPath", () => {
  it("runs the stages in order; the answer passes back, then the way back runs at close, last first, once", async () => {
    const p = path([stage("a"), stage("b"), answering("c", "done")]);
    const s = state();
    expect(await p.run(s)).toBe("done");
    expect(s.answer).toBe("done");
    expect(s.log).toEqual(["enter a", "enter b", "enter c", "answered c", "answered b", "answered a"]);
    s.log.length = 0;
    p.close(s);
    p.close(s);
    expect(s.log).toEqual(["leave c", "leave b", "leave a"]);
  });

  it("a stage that answers stops the path: the stages after it neither enter nor leave", async () => {
    const p = path([stage("a"), answering("cache", "hit"), stage("forward")]);
    const s = state();
    expect(await p.run(s)).toBe("hit");
    p.close(s);
    expect(s.log.filter((l) => l.includes("forward"))).toEqual([]);
    expect(s.log.filter((l) => l.startsWith("leave"))).toEqual(["leave cache", "leave a"]);
  });

  it("a stage that throws took nothing: only the stages before it leave", async () => {
    const p = path([
      stage("a"),
      stage("limits", {
        enter: () => {
          throw new Error("429");
        },
      }),
      stage("forward"),
    ]);
    const s = state();
    await expect(p.run(s)).rejects.toThrow("429");
    p.close(s);
    expect(s.log).toEqual(["enter a", "leave a"]);
  });

  it("only real promises are awaited: a synchronous path decides within the same turn", async () => {
    const p = path([stage("a"), answering("b", "sync")]);
    const s = state();
    const run = p.run(s);
    // Every enter ran before run() returned its promise.
    expect(s.log).toEqual(["enter a", "enter b", "answered b", "answered a"]);
    expect(await run).toBe("sync");
  });

  it("the client leaving while a stage awaits: the way back waits for that enter, then includes it", async () => {
    let release: () => void = () => {};
    const slow = stage("budget", {
      enter: (s) =>
        new Promise<undefined>((resolve) => {
          release = () => {
            s.log.push("enter budget");
            resolve(undefined);
          };
        }),
    });
    const p = path([stage("a"), slow, stage("forward")]);
    const s = state();
    const run = p.run(s);
    await Promise.resolve();
    p.close(s);
    expect(s.log).toEqual(["enter a"]); // nothing left yet: budget is still taking
    release();
    await expect(run).rejects.toBeInstanceOf(ClientLeft);
    expect(s.log).toEqual(["enter a", "enter budget", "leave budget", "leave a"]);
  });

  it("an answer made after the client left is handed to abandoned(), and the way back still sees it", async () => {
    let release: () => void = () => {};
    const forward: Stage<State, string> = {
      name: "forward",
      enter: () =>
        new Promise<string>((resolve) => {
          release = () => resolve("stream");
        }),
      leave: (s) => void s.log.push(`leave forward with ${s.answer}`),
    };
    const abandoned: string[] = [];
    const p = path([forward], abandoned);
    const s = state();
    const run = p.run(s);
    p.close(s);
    release();
    await expect(run).rejects.toBeInstanceOf(ClientLeft);
    expect(abandoned).toEqual(["stream"]);
    expect(s.log).toEqual(["leave forward with stream"]);
  });

  it("a leave that throws is reported and the others still run", async () => {
    const failures: string[] = [];
    const p = new RequestPath<State, string>(
      [
        stage("a"),
        {
          name: "bad",
          enter: () => undefined,
          leave: () => {
            throw new Error("bug");
          },
        },
        answering("c", "x"),
      ],
      { leaveFailed: (name) => void failures.push(name), abandoned: () => {} },
    );
    const s = state();
    await p.run(s);
    p.close(s);
    expect(failures).toEqual(["bad"]);
    expect(s.log.filter((l) => l.startsWith("leave"))).toEqual(["leave c", "leave a"]);
  });

  it("names lists the path", () => {
    expect(path([stage("route"), stage("forward")]).names).toEqual(["route", "forward"]);
  });
});
