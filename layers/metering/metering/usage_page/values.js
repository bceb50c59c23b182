// Counts, money and plan names as the page shows them: formatted by `Messages` for the reader, and carried in
// a <data> element with the API's exact value (integer cents, whole contacts).

import { dataValue } from "./dom.js";

export const OVERUSAGE_UNIT_CENTS = 25;
const PLAN_KEYS = {
  start: "plan.start",
  grow: "plan.grow",
  expand: "plan.expand",
  scale: "plan.scale",
  legacy: "plan.legacy",
};

export function count(messages, value) {
  return dataValue(value, messages.count(value));
}

export function money(messages, cents) {
  return dataValue(cents, messages.money(cents));
}

export function planName(messages, plan) {
  return PLAN_KEYS[plan] ? messages.text(PLAN_KEYS[plan]) : plan;
}
