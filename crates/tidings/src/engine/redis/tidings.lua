#!lua name=tidings_v5
-- The Redis engine's functions. Each call is one atomic step on one channel's
-- keys (all hash-tagged with the channel, so in a Redis Cluster they live on
-- one shard), except tidings_v5_publish_many, which places several channels
-- and is used outside Redis Cluster only. Loaded with FUNCTION LOAD REPLACE by every node; the name carries
-- a version so nodes of different releases can share one Redis.

-- This Redis process's run id, read once per process: library locals live as
-- long as the loaded library, which a restart (even one that restores the data
-- from RDB or AOF) reloads.
local boot = nil
local function boot_id()
  if not boot then
    local info = redis.call('INFO', 'server')
    boot = string.match(info, 'run_id:(%w+)') or 'unknown'
  end
  return boot
end

-- The channel's epoch. A channel with no state, or whose state was written
-- before this Redis process started (restored from a snapshot that may miss its
-- last events), starts a new epoch at offset 0: offsets are never reused within
-- an epoch, and a subscriber holding the old epoch is told to reload.
-- Returns the epoch, whether this call started it, and the history ttl the
-- channel records (read in the same call, so a publish need not write it again).
local function channel_epoch(meta, stream, new_epoch)
  local state = redis.call('HMGET', meta, 'epoch', 'run', 'ttl')
  local run = boot_id()
  if state[1] and state[2] == run then
    return state[1], false, state[3]
  end
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', new_epoch, 'top', 0, 'run', run)
  return new_epoch, true, nil
end

-- Keeps the position for at least `ttl` ms from now (never shortens it). One
-- command in the common case; a second only when GT left the expiry alone,
-- to tell "already longer" from "no expiry at all" (a key without one counts
-- as infinite for GT).
local function keep(key, ttl)
  if ttl > 0 and redis.call('PEXPIRE', key, ttl, 'GT') == 0 and redis.call('PTTL', key) == -1 then
    redis.call('PEXPIRE', key, ttl)
  end
end

-- Places one event in one channel: the body of both publish functions, so a
-- batch places each channel exactly as a single publish does.
-- The channel's arguments are `args[base + 1]` to `args[base + 12]` (see
-- tidings_v5_publish).
local function place(meta, stream, idem, args, base)
  local function a(n) return args[base + n] end
  local size, ttl, position_ttl = tonumber(a(2)), tonumber(a(3)), tonumber(a(4))
  local window = tonumber(a(5))
  if window > 0 then
    local seen = redis.call('HMGET', idem, 'offset', 'epoch', 'id')
    if seen[1] then
      return {'dup', seen[1], seen[2], seen[3]}
    end
  end
  local epoch, _, recorded_ttl = channel_epoch(meta, stream, a(1))
  local offset = redis.call('HINCRBY', meta, 'top', 1)
  local envelope = a(9) .. offset .. a(10)
  if size > 0 and ttl > 0 then
    redis.call('XADD', stream, 'MAXLEN', size, offset .. '-0', 'h', a(8), 'e', envelope, 't', a(6))
    redis.call('PEXPIRE', stream, ttl)
    if tonumber(recorded_ttl) ~= ttl then
      redis.call('HSET', meta, 'ttl', ttl)
    end
  end
  keep(meta, math.max(position_ttl, ttl))
  if window > 0 then
    redis.call('HSET', idem, 'offset', offset, 'epoch', epoch, 'id', a(12))
    redis.call('PEXPIRE', idem, window)
  end
  local message = 'E' .. epoch .. '\n' .. offset .. '\n' .. a(8) .. '\n' .. envelope
  if a(11) == '1' then
    redis.call('SPUBLISH', a(7), message)
  else
    redis.call('PUBLISH', a(7), message)
  end
  return {'ok', offset, epoch}
end

-- KEYS: meta, stream, idempotency key.
-- ARGV: new epoch, history size, history ttl ms, position ttl ms, idempotency
--       window ms (0 = no key), now ms, pub/sub channel, header, envelope prefix,
--       envelope suffix, '1' for SPUBLISH, event id.
-- Returns {'ok', offset, epoch} or {'dup', offset, epoch, id}.
redis.register_function('tidings_v5_publish', function(keys, args)
  return place(keys[1], keys[2], keys[3], args, 0)
end)

-- Several channels in one call (a broadcast), outside Redis Cluster only: the
-- channels' keys hash to different slots. Saves a round trip and a script
-- call per channel; each channel is placed as by tidings_v5_publish.
-- KEYS: meta, stream, idempotency key of each channel, in order.
-- ARGV: the 12 arguments of tidings_v5_publish for each channel, in order.
-- Returns one reply of tidings_v5_publish per channel.
redis.register_function('tidings_v5_publish_many', function(keys, args)
  local out = {}
  for c = 0, #keys / 3 - 1 do
    out[c + 1] = place(keys[c * 3 + 1], keys[c * 3 + 2], keys[c * 3 + 3], args, c * 12)
  end
  return out
end)

-- The channel's position, and the events after `after` (oldest first, or
-- newest first), at most `limit` (0 = all).
-- KEYS: meta, stream. ARGV: new epoch, keep ms (position kept at least this
-- long from now; 0 = leave as is), ttl ms for a channel this call creates,
-- after, limit, '1' for newest first, now ms.
-- Returns {epoch, top, complete (0/1), entries, history ttl ms}; each entry
-- {id, {field, value…}}.
redis.register_function('tidings_v5_read', function(keys, args)
  local meta, stream = keys[1], keys[2]
  local epoch, created = channel_epoch(meta, stream, args[1])
  if created then
    redis.call('PEXPIRE', meta, tonumber(args[3]))
  end
  keep(meta, tonumber(args[2]))
  local top = tonumber(redis.call('HGET', meta, 'top'))
  local after = tonumber(args[4])
  local limit = tonumber(args[5])
  local ttl = tonumber(redis.call('HGET', meta, 'ttl') or '0')
  if after >= top then
    return {epoch, top, 1, {}, ttl}
  end
  -- Complete when the first event after `after` is still there and unexpired
  -- (events expire oldest first, so the rest are too).
  local complete = 0
  local first = redis.call('XRANGE', stream, (after + 1) .. '-0', '+', 'COUNT', 1)
  if first[1] and first[1][1] == (after + 1) .. '-0' then
    local fields = first[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 't' and tonumber(fields[i + 1]) + ttl > tonumber(args[7]) then
        complete = 1
      end
    end
  end
  local entries
  if args[6] == '1' then
    if limit > 0 then
      entries = redis.call('XREVRANGE', stream, '+', (after + 1) .. '-0', 'COUNT', limit)
    else
      entries = redis.call('XREVRANGE', stream, '+', (after + 1) .. '-0')
    end
  elseif limit > 0 then
    entries = redis.call('XRANGE', stream, (after + 1) .. '-0', '+', 'COUNT', limit)
  else
    entries = redis.call('XRANGE', stream, (after + 1) .. '-0', '+')
  end
  return {epoch, top, complete, entries, ttl}
end)

-- Presence. KEYS: the channel's connections hash (client -> entry JSON), its
-- users hash (user -> connection count) and its tabs hash (user -> "client
-- status client status … #N", the user's connections and their statuses: what
-- a user's status, the most available of their connections', is computed from
-- without reading the whole channel; N counts the user's changes that are
-- pushed, so a push overtaken by a later one is not published after it).

local rank = {online = 1, busy = 2, away = 3}

-- The user's tabs, and their push count (0 when none is recorded).
local function tabs_of(tabs, user)
  local list = {}
  local stored = redis.call('HGET', tabs, user)
  local pushed = 0
  if stored then
    for client, status in string.gmatch(stored, '(%S+) (%S+)') do
      table.insert(list, {client, status})
    end
    pushed = tonumber(string.match(stored, '#(%d+)$') or '0')
  end
  return list, pushed
end

local function store_tabs(tabs, user, list, pushed)
  if #list == 0 then
    redis.call('HDEL', tabs, user)
    return
  end
  local parts = {}
  for _, tab in ipairs(list) do
    table.insert(parts, tab[1] .. ' ' .. tab[2])
  end
  if pushed > 0 then
    table.insert(parts, '#' .. pushed)
  end
  redis.call('HSET', tabs, user, table.concat(parts, ' '))
end

-- The most available status in `list`, or '' when it is empty.
local function status_of(list)
  local best = ''
  for _, tab in ipairs(list) do
    if best == '' or (rank[tab[2]] or 9) < (rank[best] or 9) then
      best = tab[2]
    end
  end
  return best
end

-- Appends the values of `list` to `out`; returns `out`.
local function extend(out, list)
  for _, v in ipairs(list) do
    table.insert(out, v)
  end
  return out
end

-- Sets (status given) or removes (status nil) `client` among the user's tabs.
-- Returns {the user's push count, status before, status after, then each
-- remaining client id and its entry}: when the status changed (a push), the
-- count went up by one, and the entries give the member as a listing shows it
-- at this instant (read here, not after: another tab may leave meanwhile).
local function change_tab(conns, tabs, user, client, status)
  local list, pushed = tabs_of(tabs, user)
  local before = status_of(list)
  local kept = {}
  for _, tab in ipairs(list) do
    if tab[1] ~= client then
      table.insert(kept, tab)
    end
  end
  if status then
    table.insert(kept, {client, status})
  end
  local after = status_of(kept)
  if before ~= '' and after ~= '' and before ~= after then
    pushed = pushed + 1
  end
  store_tabs(tabs, user, kept, pushed)
  local out = {pushed, before, after}
  for _, tab in ipairs(kept) do
    table.insert(out, tab[1])
    table.insert(out, redis.call('HGET', conns, tab[1]) or '')
  end
  return out
end

-- ARGV: client, user, entry, status. Returns {the user's connection count
-- after the join (1 = the user joined; 0 = the client was already there),
-- then what change_tab returns}.
redis.register_function('tidings_v5_presence_join', function(keys, args)
  local existed = redis.call('HEXISTS', keys[1], args[1])
  redis.call('HSET', keys[1], args[1], args[3])
  local count = 0
  if existed == 0 then
    count = redis.call('HINCRBY', keys[2], args[2], 1)
  end
  if count == 1 then
    -- The user's first connection (most joins): no list to read.
    -- Its push (a join) is the user's first here.
    redis.call('HSET', keys[3], args[2], args[1] .. ' ' .. args[4] .. ' #1')
    return {1, 1, '', args[4], args[1], args[3]}
  end
  return extend({count}, change_tab(keys[1], keys[3], args[2], args[1], args[4]))
end)

-- ARGV: client, user. Returns {connections left for the user (-1 = the client
-- was not there), the removed entry, then what change_tab returns (nothing
-- when the user left: a leave's push is published once no tab is left)}.
redis.register_function('tidings_v5_presence_leave', function(keys, args)
  local entry = redis.call('HGET', keys[1], args[1])
  if not entry then
    return {-1, ''}
  end
  redis.call('HDEL', keys[1], args[1])
  local left = redis.call('HINCRBY', keys[2], args[2], -1)
  if left <= 0 then
    -- The user's last connection (most leaves): the list goes with it.
    redis.call('HDEL', keys[2], args[2])
    redis.call('HDEL', keys[3], args[2])
    return {left, entry}
  end
  return extend({left, entry}, change_tab(keys[1], keys[3], args[2], args[1], nil))
end)

-- A connection's new status. KEYS: connections hash, tabs hash.
-- ARGV: client, user, entry with the new status, status. Returns {0} when the
-- client is not there, else {1, then what change_tab returns}.
redis.register_function('tidings_v5_presence_status', function(keys, args)
  if redis.call('HEXISTS', keys[1], args[1]) == 0 then
    return {0}
  end
  redis.call('HSET', keys[1], args[1], args[3])
  return extend({1}, change_tab(keys[1], keys[2], args[2], args[1], args[4]))
end)

-- Publishes a presence push unless a later pushed change of the same user on
-- the channel overtook it (pushes are published after their change, by
-- whichever node made it, so two can cross). KEYS: tabs hash. ARGV: user, the
-- push count its change returned ('0' for a leave: published once the user
-- has no tab left), pub/sub channel, message, '1' for SPUBLISH. Returns
-- whether it was published.
redis.register_function('tidings_v5_presence_push', function(keys, args)
  local stored = redis.call('HGET', keys[1], args[1])
  local current = stored and (string.match(stored, '#(%d+)$') or '0')
  if (args[2] == '0' and not stored) or current == args[2] then
    if args[5] == '1' then
      redis.call('SPUBLISH', args[3], args[4])
    else
      redis.call('PUBLISH', args[3], args[4])
    end
    return 1
  end
  return 0
end)

-- Removes every entry of a node that died. ARGV: node id.
-- KEYS: connections hash, users hash, tabs hash. Returns {the entries of
-- users who have no connection left, then for each user left with other
-- connections whose status changed, what change_tab returns after the last
-- of their removed connections, with the user first and the status before
-- the first}.
redis.register_function('tidings_v5_presence_reap', function(keys, args)
  local all = redis.call('HGETALL', keys[1])
  local gone = {}
  local first_before = {}
  local last = {}
  local users = {}
  for i = 1, #all, 2 do
    local entry = cjson.decode(all[i + 1])
    if entry['n'] == args[1] then
      local user = entry['u']
      redis.call('HDEL', keys[1], all[i])
      local change = change_tab(keys[1], keys[3], user, all[i], nil)
      if first_before[user] == nil then
        first_before[user] = change[2]
        table.insert(users, user)
      end
      last[user] = change
      local left = redis.call('HINCRBY', keys[2], user, -1)
      if left <= 0 then
        redis.call('HDEL', keys[2], user)
        table.insert(gone, all[i + 1])
        last[user] = nil
      end
    end
  end
  local out = {gone}
  for _, user in ipairs(users) do
    local change = last[user]
    if change and first_before[user] ~= change[3] then
      change[2] = first_before[user]
      table.insert(out, extend({user}, change))
    end
  end
  return out
end)

-- A node's heartbeat: records its entry and returns every node's entry with
-- the milliseconds since its last heartbeat, on Redis's clock.
-- KEYS: nodes hash, heartbeat times hash. ARGV: node, entry JSON.
redis.register_function('tidings_v5_heartbeat', function(keys, args)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if args[1] ~= '' then
    redis.call('HSET', keys[1], args[1], args[2])
    redis.call('HSET', keys[2], args[1], now)
  end
  local seen = redis.call('HGETALL', keys[2])
  local out = {}
  for i = 1, #seen, 2 do
    local entry = redis.call('HGET', keys[1], seen[i])
    table.insert(out, {seen[i], now - tonumber(seen[i + 1]), entry or ''})
  end
  return out
end)
