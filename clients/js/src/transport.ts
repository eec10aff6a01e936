import { retryAfterMs } from './backoff.js';
import { SseParser, type SseEvent } from './sse.js';
import { HeraldError } from './types.js';

/** How a stream ended. */
export type Ending =
  | { kind: 'network'; error: HeraldError }
  | { kind: 'ended' }
  | { kind: 'idle' }
  | { kind: 'http'; error: HeraldError; retryAfterMs?: number };

export interface StreamCallbacks {
  onOpen(): void;
  onEvent(e: SseEvent): void;
  /** An `id:` without an event: the stream's cursor as it starts. */
  onCursor(id: string): void;
  onEnd(e: Ending): void;
}

export interface StreamRequest {
  /** `/v1/sse?channel=…` on the server. */
  url: string;
  token?: string;
  cursor?: string;
  idleTimeoutMs: number;
  fetch: typeof fetch;
}

export interface Stream {
  close(): void;
  /** EventSource: also listen for events of this name. */
  listen(event: string): void;
}

/** The error of a refused request: its status and the body's `error.code`. */
export async function refusal(resp: Response): Promise<Extract<Ending, { kind: 'http' }>> {
  let code: string | undefined;
  let message = `HTTP ${resp.status}`;
  try {
    const body = JSON.parse(await resp.text());
    code = body?.error?.code;
    if (body?.error?.message) message = `${resp.status} ${code}: ${body.error.message}`;
  } catch {
    // not JSON: the status says enough
  }
  return {
    kind: 'http',
    error: new HeraldError(message, resp.status, code),
    retryAfterMs: retryAfterMs(resp.headers.get('retry-after')),
  };
}

/** Ends the stream when nothing (not even a heartbeat) arrived for `ms`. */
class Watchdog {
  private timer?: ReturnType<typeof setTimeout>;
  constructor(
    private readonly ms: number,
    private readonly fire: () => void,
  ) {}
  pet(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(this.fire, this.ms);
  }
  stop(): void {
    clearTimeout(this.timer);
  }
}

/** A stream read with `fetch` (Node 20+, or browsers without EventSource): headers for the
 * token and cursor, and the status of a refusal. */
export function openFetchStream(req: StreamRequest, cb: StreamCallbacks): Stream {
  const ac = new AbortController();
  let done = false;
  const end = (e: Ending) => {
    if (done) return;
    done = true;
    dog.stop();
    ac.abort();
    cb.onEnd(e);
  };
  const dog = new Watchdog(req.idleTimeoutMs, () => end({ kind: 'idle' }));
  void (async () => {
    const headers: Record<string, string> = { accept: 'text/event-stream' };
    if (req.token) headers.authorization = `Bearer ${req.token}`;
    if (req.cursor) headers['last-event-id'] = req.cursor;
    dog.pet();
    let resp: Response;
    try {
      resp = await req.fetch(req.url, { headers, signal: ac.signal, cache: 'no-store' });
    } catch (e) {
      end({ kind: 'network', error: new HeraldError(`stream: ${e}`) });
      return;
    }
    if (!resp.ok || !resp.body) {
      end(await refusal(resp));
      return;
    }
    cb.onOpen();
    const parser = new SseParser(
      (e) => !done && cb.onEvent(e),
      // The client keeps its own backoff: the server's `retry:` only sets EventSource's.
      () => {},
      (id) => !done && cb.onCursor(id),
    );
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { done: over, value } = await reader.read();
        if (over || done) break;
        dog.pet();
        parser.feed(value);
      }
    } catch (e) {
      end({ kind: 'network', error: new HeraldError(`stream: ${e}`) });
      return;
    }
    end({ kind: 'ended' });
  })();
  return {
    close: () => {
      done = true;
      dog.stop();
      ac.abort();
    },
    listen: () => {},
  };
}

/**
 * A stream read by the browser's own EventSource (token and cursor in the query). The client
 * reconnects by itself, so EventSource's reconnect is never used: on any error the
 * EventSource is closed. One that failed before opening does not say why, so the same URL is
 * asked once with `fetch` to learn the status.
 */
export function openEventSourceStream(
  req: StreamRequest,
  cb: StreamCallbacks,
  ES: typeof EventSource,
  names: Iterable<string>,
): Stream {
  const url = new URL(req.url);
  if (req.token) url.searchParams.set('token', req.token);
  if (req.cursor) url.searchParams.set('last_event_id', req.cursor);
  const es = new ES(url.toString());
  let opened = false;
  let done = false;
  const listening = new Set<string>();
  const end = (e: Ending) => {
    if (done) return;
    done = true;
    dog.stop();
    es.close();
    cb.onEnd(e);
  };
  const dog = new Watchdog(req.idleTimeoutMs, () => end({ kind: 'idle' }));
  dog.pet();
  const onMessage = (ev: Event) => {
    if (done) return;
    dog.pet();
    const m = ev as MessageEvent;
    cb.onEvent({
      event: m.type,
      data: String(m.data),
      id: m.lastEventId || undefined,
      // EventSource does not say whether this event had an id of its own.
      hasId: false,
    });
  };
  const listen = (name: string) => {
    if (listening.has(name)) return;
    listening.add(name);
    es.addEventListener(name, onMessage);
  };
  for (const n of ['message', 'herald:reset', 'herald:reconnect', 'herald:occupancy', 'herald:join', 'herald:leave']) {
    listen(n);
  }
  for (const n of names) listen(n);
  es.onopen = () => {
    if (done) return;
    opened = true;
    dog.pet();
    cb.onOpen();
  };
  es.onerror = () => {
    if (done) return;
    if (opened) {
      end({ kind: 'ended' });
      return;
    }
    done = true;
    dog.stop();
    es.close();
    void probe(url.toString(), req.fetch).then((e) => cb.onEnd(e));
  };
  return {
    close: () => {
      done = true;
      dog.stop();
      es.close();
    },
    listen,
  };
}

/** Why a stream could not open: the status of the same request, its body unread. */
async function probe(url: string, fetchImpl: typeof fetch): Promise<Ending> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 10_000);
  try {
    const resp = await fetchImpl(url, { signal: ac.signal, cache: 'no-store' });
    if (resp.ok) {
      ac.abort();
      return { kind: 'network', error: new HeraldError('stream failed, the server answers 200') };
    }
    return await refusal(resp);
  } catch (e) {
    return { kind: 'network', error: new HeraldError(`stream: ${e}`) };
  } finally {
    clearTimeout(timer);
  }
}
