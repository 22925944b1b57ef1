/**
 * `shareAcrossTabs`: one connection for every tab of an origin. The tab holding
 * the Web Lock `name` is the leader: it owns the connection and its hub, and
 * serves the other tabs over a BroadcastChannel of the same name. Subscriptions
 * are reference-counted per tab in the hub. When the leader tab goes away the
 * browser hands the lock to a waiting tab, which announces itself; every tab
 * re-sends its subscriptions with the position it has reached, and the new
 * connection resubscribes from the earliest of them (recovery fills the gap; each
 * tab drops what it already has).
 */
import type { RequestOptions, StateInfo, StateReason, SubscribedInfo } from './connection.js';
import { TidingsError } from './errors.js';
import type { Backend, ControlOp, ErrorShape, Hub, HubSink } from './hub.js';
import type { ClientMessage, EventEnvelope, PresenceStatus, ServerMessage, StreamPosition } from './protocol.js';

/** The part of the client the coordinator drives. */
interface TabClient {
  readonly consumerId: string;
  readonly sink: HubSink;
  readonly stateInfo: StateInfo;
  subscriptions(): [string, StreamPosition | undefined][];
  becomeLeader(connect: boolean, announce?: { state: 'connecting' | 'reconnecting'; reason?: StateReason }): Hub;
  useBackend(backend: Backend): void;
  leaderLost(): void;
}

type TabMessage =
  // follower → leader
  | { t: 'hello'; from: string }
  | { t: 'sync'; from: string; subs: [string, StreamPosition | undefined][] }
  | { t: 'sub'; from: string; channel: string; since?: StreamPosition }
  | { t: 'unsub'; from: string; channel: string }
  | { t: 'req'; from: string; rid: number; message: ClientMessage; timeout: number }
  | { t: 'ctl'; from: string; op: ControlOp }
  | { t: 'bye'; from: string }
  // leader → followers
  | { t: 'leader'; from: string; info: StateInfo; status: PresenceStatus }
  | { t: 'status'; from: string; status: PresenceStatus }
  | { t: 'state'; from: string; info: StateInfo }
  | { t: 'event'; from: string; event: EventEnvelope }
  | { t: 'subscribed'; from: string; info: SubscribedInfo; to?: string }
  | { t: 'subError'; from: string; channel: string; error: ErrorShape }
  | { t: 'serverUnsub'; from: string; channel: string; reason: string }
  | { t: 'res'; from: string; to: string; rid: number; reply?: ServerMessage; error?: ErrorShape };

interface LockManagerLike {
  request(name: string, callback: () => Promise<void>): Promise<void>;
}

/** How long a new leader waits for the other tabs' positions before connecting. */
const SYNC_WINDOW_MS = 150;

/** Why the tabs are `reconnecting` while a new leader takes over. */
const LEADER_LOST: StateReason = { error: 'connection_lost', message: 'the leader tab closed' };

export class TabCoordinator {
  static supported(): boolean {
    const nav = (globalThis as { navigator?: { locks?: LockManagerLike } }).navigator;
    return typeof BroadcastChannel === 'function' && typeof nav?.locks?.request === 'function';
  }

  #client: TabClient;
  #name: string;
  #channel: BroadcastChannel | null = null;
  #leader = false;
  #leaderId: string | null = null;
  #release: (() => void) | null = null;
  #stopped = false;
  #remote: RemoteBackend | null = null;
  #unsinkBroadcast: (() => void) | null = null;
  #connectTimer: ReturnType<typeof setTimeout> | null = null;
  /** The shared connection's presence status, as the leader last reported it. */
  #status: PresenceStatus = 'online';
  #onPageHide = (): void => this.stop();

  constructor(client: TabClient, name: string) {
    this.#client = client;
    this.#name = name;
  }

  get isLeader(): boolean {
    return this.#leader;
  }

  start(connect: boolean): void {
    const channel = new BroadcastChannel(this.#name);
    this.#channel = channel;
    channel.onmessage = (ev: MessageEvent) => this.#onMessage(ev.data as TabMessage);
    const remote = new RemoteBackend(this.#client.consumerId, (m) => this.#post(m));
    this.#remote = remote;
    this.#client.useBackend(remote);
    if (connect) this.#client.sink.state({ ...this.#client.stateInfo, state: 'connecting', previous: this.#client.stateInfo.state });
    this.#post({ t: 'hello', from: this.#client.consumerId });
    const g = globalThis as { addEventListener?: (n: string, f: () => void) => void };
    g.addEventListener?.('pagehide', this.#onPageHide);
    const locks = (globalThis as unknown as { navigator: { locks: LockManagerLike } }).navigator.locks;
    void locks.request(this.#name, () => {
      if (this.#stopped) return Promise.resolve();
      return new Promise<void>((resolve) => {
        this.#release = resolve;
        this.#becomeLeader(connect);
      });
    });
  }

  #becomeLeader(autoConnect: boolean): void {
    // What this tab last knew of the shared connection (from the previous leader).
    const known = this.#client.stateInfo.state;
    const handover = this.#leaderId !== null && this.#leaderId !== this.#client.consumerId;
    // A handover keeps a connection that was wanted going (also without autoConnect).
    const connect = autoConnect || (handover && (known === 'connected' || known === 'reconnecting' || known === 'connecting'));
    this.#leader = true;
    this.#leaderId = this.#client.consumerId;
    this.#remote?.fail('the leader tab changed');
    this.#remote = null;
    // Report the attempt the timer below starts from the start (every tab gets
    // it in the `leader` message): a shared connection that was up is
    // `reconnecting` until the new one is `connected`, never `disconnected`.
    const up = known === 'connected' || known === 'reconnecting';
    const hub = this.#client.becomeLeader(
      false,
      !connect ? undefined : up ? { state: 'reconnecting', reason: LEADER_LOST } : { state: 'connecting' },
    );
    // The status set through the previous leader's connection carries over.
    hub.connection.presetStatus(this.#status);
    const from = this.#client.consumerId;
    this.#unsinkBroadcast = hub.addSink({
      state: (info) => this.#post({ t: 'state', from, info }),
      event: (event) => this.#post({ t: 'event', from, event }),
      subscribed: (info, to) => this.#post(to === undefined ? { t: 'subscribed', from, info } : { t: 'subscribed', from, info, to }),
      subscribeError: (channel, error) => this.#post({ t: 'subError', from, channel, error }),
      serverUnsubscribed: (channel, reason) => this.#post({ t: 'serverUnsub', from, channel, reason }),
      presenceStatus: (status) => this.#post({ t: 'status', from, status }),
    });
    this.#post({ t: 'leader', from, info: hub.connection.info, status: hub.connection.presenceStatus });
    if (connect) {
      // Give the other tabs a moment to report their positions first.
      this.#connectTimer = setTimeout(() => {
        this.#connectTimer = null;
        // Not if this tab's app called `disconnect()` in the meantime.
        if (this.#leader && hub.connection.info.state !== 'disconnected') hub.control('connect');
      }, SYNC_WINDOW_MS);
    }
  }

  #post(message: TabMessage): void {
    try {
      this.#channel?.postMessage(message);
    } catch {
      // Closed.
    }
  }

  #onMessage(message: TabMessage): void {
    if (this.#stopped || !message || typeof message !== 'object') return;
    if (this.#leader) {
      this.#asLeader(message);
    } else {
      this.#asFollower(message);
    }
  }

  #asLeader(message: TabMessage): void {
    const hub = (this.#client as { hub?: Hub | null }).hub;
    if (!hub) return;
    const me = this.#client.consumerId;
    switch (message.t) {
      case 'hello':
        this.#post({ t: 'leader', from: me, info: hub.connection.info, status: hub.connection.presenceStatus });
        break;
      case 'sync':
        hub.sync(message.from, message.subs);
        break;
      case 'sub':
        hub.subscribe(message.from, message.channel, message.since);
        break;
      case 'unsub':
        hub.unsubscribe(message.from, message.channel);
        break;
      case 'req': {
        const { from, rid } = message;
        hub.request(message.message, { timeout: message.timeout }).then(
          (reply) => this.#post({ t: 'res', from: me, to: from, rid, reply }),
          (err: unknown) => {
            const error: ErrorShape =
              err instanceof TidingsError ? { code: err.code, message: err.message } : { code: 'internal', message: String(err) };
            this.#post({ t: 'res', from: me, to: from, rid, error });
          },
        );
        break;
      }
      case 'ctl':
        hub.control(message.op);
        break;
      case 'bye':
        hub.drop(message.from);
        break;
      default:
        break;
    }
  }

  #asFollower(message: TabMessage): void {
    const sink = this.#client.sink;
    switch (message.t) {
      case 'leader':
        if (this.#leaderId !== message.from) {
          this.#leaderId = message.from;
          // Requests sent to an earlier leader may be lost with it.
          this.#remote?.fail('the leader tab changed');
        }
        // A tab of an older release (mid-deploy) sends no status.
        if (message.status) this.#status = message.status;
        this.#post({ t: 'sync', from: this.#client.consumerId, subs: this.#client.subscriptions() });
        sink.state(message.info);
        break;
      case 'status':
        this.#status = message.status;
        break;
      case 'state':
        sink.state(message.info);
        break;
      case 'event':
        sink.event(message.event);
        break;
      case 'subscribed':
        sink.subscribed(message.info, message.to);
        break;
      case 'subError':
        sink.subscribeError(message.channel, message.error);
        break;
      case 'serverUnsub':
        sink.serverUnsubscribed(message.channel, message.reason);
        break;
      case 'res':
        if (message.to === this.#client.consumerId) this.#remote?.settle(message.rid, message.reply, message.error);
        break;
      default:
        break;
    }
  }

  /** This tab leaves: hands the connection over if it held it. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    const g = globalThis as { removeEventListener?: (n: string, f: () => void) => void };
    g.removeEventListener?.('pagehide', this.#onPageHide);
    if (this.#connectTimer) clearTimeout(this.#connectTimer);
    if (!this.#leader) this.#post({ t: 'bye', from: this.#client.consumerId });
    this.#remote?.fail('the tab closed');
    this.#unsinkBroadcast?.();
    this.#unsinkBroadcast = null;
    if (this.#leader) {
      this.#leader = false;
      this.#client.leaderLost();
    }
    this.#release?.();
    this.#release = null;
    this.#channel?.close();
    this.#channel = null;
  }
}

/** A follower's way to the leader's hub. */
class RemoteBackend implements Backend {
  #me: string;
  #post: (message: TabMessage) => void;
  #nextRid = 1;
  #pending = new Map<number, { resolve: (r: ServerMessage) => void; reject: (e: TidingsError) => void; timer: ReturnType<typeof setTimeout> }>();

  constructor(me: string, post: (message: TabMessage) => void) {
    this.#me = me;
    this.#post = post;
  }

  subscribe(channel: string, since?: StreamPosition): void {
    this.#post(since ? { t: 'sub', from: this.#me, channel, since } : { t: 'sub', from: this.#me, channel });
  }

  unsubscribe(channel: string): void {
    this.#post({ t: 'unsub', from: this.#me, channel });
  }

  request(message: ClientMessage, options: RequestOptions): Promise<ServerMessage> {
    const timeout = options.timeout ?? 10_000;
    return new Promise((resolve, reject) => {
      const rid = this.#nextRid++;
      const timer = setTimeout(() => {
        this.#pending.delete(rid);
        reject(new TidingsError('timeout', `no reply to ${message.type} within ${timeout} ms`));
      }, timeout);
      this.#pending.set(rid, { resolve, reject, timer });
      this.#post({ t: 'req', from: this.#me, rid, message, timeout });
    });
  }

  control(op: ControlOp): void {
    this.#post({ t: 'ctl', from: this.#me, op });
  }

  close(): void {
    this.fail('the client closed');
  }

  settle(rid: number, reply: ServerMessage | undefined, error: ErrorShape | undefined): void {
    const pending = this.#pending.get(rid);
    if (!pending) return;
    this.#pending.delete(rid);
    clearTimeout(pending.timer);
    if (error) pending.reject(new TidingsError(error.code, error.message));
    else if (reply) pending.resolve(reply);
  }

  fail(reason: string): void {
    const all = [...this.#pending.values()];
    this.#pending.clear();
    for (const pending of all) {
      clearTimeout(pending.timer);
      pending.reject(new TidingsError('connection_lost', reason));
    }
  }
}
