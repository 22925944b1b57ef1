// The SSE stream parser of the SSE transport.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SseParser } from '../../packages/client/dist/index.js';

test('SseParser splits messages across chunks, handles CRLF, comments, ids and multi-line data', () => {
  const parser = new SseParser();
  const messages = [];
  let comments = 0;
  parser.onMessage = (m) => messages.push(m);
  parser.onComment = () => comments++;
  parser.push(': keep-alive\r\n\r\nid: r1\r\nevent: orders.created\r\nda');
  parser.push('ta: {"a":1}\r\n\r\n');
  parser.push('id: r2\nevent: unrecoverable\ndata: {"channel":"x"}\n\ndata: line1\ndata: line2\n\n');
  assert.equal(comments, 1);
  assert.deepEqual(messages, [
    { event: 'orders.created', data: '{"a":1}', id: 'r1' },
    { event: 'unrecoverable', data: '{"channel":"x"}', id: 'r2' },
    { event: 'message', data: 'line1\nline2', id: 'r2' },
  ]);
});

test('SseParser keeps a CRLF split across chunks as one line end', () => {
  const parser = new SseParser();
  const messages = [];
  parser.onMessage = (m) => messages.push(m);
  parser.push('event: a\r');
  parser.push('\ndata: 1\r');
  parser.push('\n\r');
  parser.push('\n');
  assert.deepEqual(messages, [{ event: 'a', data: '1', id: undefined }]);
});
