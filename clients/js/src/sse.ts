/** One dispatched event of an SSE stream. */
export interface SseEvent {
  event: string;
  data: string;
  /** The last `id:` seen so far (SSE keeps it across events). */
  id?: string;
  /** This event carried an `id:` field of its own. */
  hasId: boolean;
}

/** An incremental parser of `text/event-stream` (the WHATWG rules), fed decoded text. */
export class SseParser {
  private buf = '';
  private event = '';
  private data: string[] = [];
  private lastId?: string;
  private sawId = false;
  private sawField = false;

  constructor(
    private readonly onEvent: (e: SseEvent) => void,
    private readonly onRetry: (ms: number) => void = () => {},
    /** A block with an `id:` and no event (Herald names where a stream starts this way). */
    private readonly onId: (id: string) => void = () => {},
  ) {}

  feed(text: string): void {
    this.buf += text;
    for (;;) {
      const nl = this.buf.search(/\r\n|\r|\n/);
      if (nl < 0) return;
      // A lone \r at the end may be the first half of \r\n: wait for more.
      if (this.buf[nl] === '\r' && nl === this.buf.length - 1) return;
      const line = this.buf.slice(0, nl);
      const skip = this.buf.startsWith('\r\n', nl) ? 2 : 1;
      this.buf = this.buf.slice(nl + skip);
      this.line(line);
    }
  }

  private line(line: string): void {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.startsWith(':')) return; // a comment: heartbeats
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event':
        this.event = value;
        this.sawField = true;
        break;
      case 'data':
        this.data.push(value);
        this.sawField = true;
        break;
      case 'id':
        if (!value.includes('\0')) {
          this.lastId = value;
          this.sawId = true;
        }
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.onRetry(Number(value));
        break;
    }
  }

  private dispatch(): void {
    const had = this.sawField;
    const event = this.event || 'message';
    const data = this.data.join('\n');
    const hasId = this.sawId;
    this.event = '';
    this.data = [];
    this.sawField = false;
    this.sawId = false;
    if (!had) {
      if (hasId && this.lastId !== undefined) this.onId(this.lastId);
      return;
    }
    this.onEvent({ event, data, id: this.lastId, hasId });
  }
}
