// Exact JSON for the dashboard: numbers keep the text they came in, objects their member order.
// JSON.parse makes 12345678901234567891 a double (12345678901234567000) and moves
// integer-like keys ("10") to the front of an object, so a record read with it and saved
// back would change what nobody edited. Here a number stays an ExactJSON.Number holding its
// text, an object is a Map (insertion order for every key, "__proto__" included), and
// stringify writes both back as they came. Strings go through JSON.parse/JSON.stringify,
// which are exact for them.
"use strict";

const ExactJSON = (() => {
  class JSONNumber {
    constructor(text) { this.text = text; }
    toString() { return this.text; }
    valueOf() { return Number(this.text); }   // for arithmetic on figures; may round
  }

  // Sticky patterns: each matches exactly at lastIndex (RFC 8259's grammar).
  const SPACE = /[ \t\n\r]*/y;
  const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
  const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;

  function parse(text) {
    let at = 0;
    const fail = (what) => { throw new SyntaxError(`${what} at position ${at}`); };
    const take = (pattern) => {
      pattern.lastIndex = at;
      const m = pattern.exec(text);
      if (m === null) return null;
      at = pattern.lastIndex;
      return m[0];
    };
    const skip = () => { take(SPACE); };
    const expect = (c) => { skip(); if (text[at] !== c) fail(`expected '${c}'`); at++; };

    function value() {
      skip();
      const c = text[at];
      if (c === "{") return object();
      if (c === "[") return array();
      if (c === '"') return JSON.parse(take(STRING) ?? fail("bad string"));
      for (const [word, v] of [["true", true], ["false", false], ["null", null]]) {
        if (text.startsWith(word, at)) { at += word.length; return v; }
      }
      const number = take(NUMBER);
      if (number === null) fail(at < text.length ? "unexpected character" : "unexpected end");
      return new JSONNumber(number);
    }

    function object() {
      const map = new Map();
      at++;
      skip();
      if (text[at] === "}") { at++; return map; }
      for (;;) {
        skip();
        const key = JSON.parse(take(STRING) ?? fail("expected a string key"));
        if (map.has(key)) fail(`duplicate key ${JSON.stringify(key)}`);
        expect(":");
        map.set(key, value());
        skip();
        if (text[at] === "}") { at++; return map; }
        expect(",");
      }
    }

    function array() {
      const list = [];
      at++;
      skip();
      if (text[at] === "]") { at++; return list; }
      for (;;) {
        list.push(value());
        skip();
        if (text[at] === "]") { at++; return list; }
        expect(",");
      }
    }

    const result = value();
    skip();
    if (at !== text.length) fail("unexpected text after the value");
    return result;
  }

  // Maps and plain objects are both written as objects; `indent` as in JSON.stringify.
  function stringify(value, indent = "", outer = "") {
    if (value === null || typeof value === "boolean") return String(value);
    if (value instanceof JSONNumber) return value.text;
    if (typeof value === "string" || typeof value === "number") return JSON.stringify(value);
    const inner = outer + indent;
    const [open, close, parts] = Array.isArray(value)
      ? ["[", "]", value.map((v) => stringify(v, indent, inner))]
      : ["{", "}", [...(value instanceof Map ? value : Object.entries(value))].map(
        ([k, v]) => JSON.stringify(k) + (indent ? ": " : ":") + stringify(v, indent, inner))];
    if (parts.length === 0) return open + close;
    if (!indent) return open + parts.join(",") + close;
    return `${open}\n${inner}${parts.join(",\n" + inner)}\n${outer}${close}`;
  }

  // The members of a parsed object as a plain object, for reading fields by name.
  function fields(value) {
    return value instanceof Map ? Object.fromEntries(value) : value;
  }

  return { parse, stringify, fields, Number: JSONNumber };
})();
