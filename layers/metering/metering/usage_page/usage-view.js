// The usage of one period as the API answers it: what state it is in, the meter against the allowance with
// its 80 % and 100 % marks, the period's dates in the account's zone, overusage so far and projected, the
// advice, and the alerts.

import { byId, element, replaceChildren, show } from "./dom.js";
import { count, money, OVERUSAGE_UNIT_CENTS, planName } from "./values.js";

const WARNING_PERCENT = 80;
const DAY_MS = 24 * 60 * 60 * 1000;
const CYCLE_KEYS = { monthly: "cycle.monthly", yearly: "cycle.yearly" };
const PROJECTION_KEYS = {
  "previous period's shape": "projection.previousShape",
  linear: "projection.linear",
  "so far": "projection.soFar",
};
const ADVICE_KEYS = { overusage: "advice.overusage", addons: "advice.addons" };

export function renderUsage(messages, usage) {
  replaceChildren(byId("notices"), notices(messages, usage));
  renderMeter(messages, usage);
  replaceChildren(byId("period-facts"), periodFacts(messages, usage).flat());
  renderCosts(messages, usage);
  renderAdvice(messages, usage.advice);
  renderAlerts(messages, usage);
}

function isMetered(usage) {
  return usage.billed && usage.allowance > 0;
}

function fact(label, valueNodes, name) {
  return [element("dt", { text: label }), element("dd", { attributes: { "data-fact": name } }, valueNodes)];
}

// ---- the state of the period ----

function notices(messages, usage) {
  const said = [];
  const say = (key, values = {}, { plural, tone = "info" } = {}) =>
    said.push(element("p", { className: `notice notice-${tone}` }, messages.nodes(key, values, plural)));
  if (usage.subscription === null) say("notice.noSubscription");
  else if (!usage.billed) say("notice.legacy");
  if (usage.closed) closedNotice(messages, usage, say);
  else if (isMetered(usage)) openNotice(messages, usage, say);
  return said;
}

function closedNotice(messages, usage, say) {
  const { invoice } = usage;
  if (!usage.billed) {
    say("notice.closed");
  } else if (invoice !== null) {
    say("notice.closedInvoiced", {
      date: messages.date(invoice.issuedAt, usage.timezone),
      contacts: count(messages, invoice.overusageContacts),
      amount: money(messages, invoice.amountCents),
    });
  } else if (usage.overusage.contacts > 0) {
    say("notice.closedInvoicePending");
  } else {
    say("notice.closedNoOverusage");
  }
}

function openNotice(messages, usage, say) {
  const { activeContacts: active, allowance } = usage;
  const price = money(messages, OVERUSAGE_UNIT_CENTS);
  if (active > allowance) {
    const over = active - allowance;
    const values = { over: count(messages, over), allowance: count(messages, allowance), price };
    say("notice.overAllowance", values, { plural: over, tone: "alert" });
  } else if (active === allowance) {
    const values = { allowance: count(messages, allowance), price };
    say("notice.atAllowance", values, { plural: allowance, tone: "alert" });
  } else if (active * 100 >= allowance * WARNING_PERCENT) {
    const percent = messages.percent(Math.floor((active * 100) / allowance));
    say("notice.nearAllowance", { percent }, { tone: "warning" });
  }
}

// ---- the meter ----

function renderMeter(messages, usage) {
  const label = byId("meter-label");
  const meter = byId("meter");
  const { activeContacts: active, allowance } = usage;
  show(meter, isMetered(usage));
  if (!isMetered(usage)) {
    replaceChildren(label, messages.nodes("meter.active", { active: count(messages, active) }, active));
    return;
  }
  const values = { active: count(messages, active), allowance: count(messages, allowance) };
  replaceChildren(label, messages.nodes("meter.ofAllowance", values));
  // Over the allowance the scale grows to the count, so the 100 % mark shows how far over it is.
  const scale = Math.max(active, allowance);
  const share = (contacts) => `${(contacts / scale) * 100}%`;
  meter.setAttribute("aria-valuemin", "0");
  meter.setAttribute("aria-valuemax", String(scale));
  meter.setAttribute("aria-valuenow", String(active));
  const text = { active: messages.count(active), allowance: messages.count(allowance) };
  meter.setAttribute("aria-valuetext", messages.text("meter.ofAllowance", text));
  meter.classList.toggle("is-near", active <= allowance && active * 100 >= allowance * WARNING_PERCENT);
  meter.querySelector(".meter-fill").style.width = share(Math.min(active, allowance));
  const overflow = meter.querySelector(".meter-overflow");
  overflow.style.left = share(allowance);
  overflow.style.width = share(Math.max(0, active - allowance));
  for (const mark of meter.querySelectorAll(".meter-mark")) {
    const percent = Number(mark.dataset.mark);
    const at = (allowance * percent) / 100;
    mark.style.left = share(at);
    mark.classList.toggle("is-label-before", at * 2 > scale);
    replaceChildren(mark, [element("span", { text: messages.percent(percent) })]);
  }
}

// ---- the period, the plan and the allowance ----

function periodFacts(messages, usage) {
  const { timezone } = usage;
  const dates = messages.dateRange(usage.periodStart, usage.periodEnd, timezone);
  const period = messages.nodes("facts.periodValue", { dates, zone: timezone });
  const facts = [fact(messages.text("facts.period"), period, "period")];
  if (usage.closed) {
    facts.push(fact(messages.text("facts.status"), [messages.text("facts.closed")], "status"));
  } else {
    // counted from the API's asOf, the instant its count holds for
    const left = Math.max(0, Math.ceil((Date.parse(usage.periodEnd) - Date.parse(usage.asOf)) / DAY_MS));
    facts.push(fact(messages.text("facts.daysLeft"), [count(messages, left)], "days-left"));
    facts.push(fact(messages.text("facts.countedUpTo"), [messages.dateTime(usage.asOf, timezone)], "as-of"));
  }
  facts.push(fact(messages.text("facts.plan"), planFact(messages, usage.subscription), "plan"));
  if (isMetered(usage)) {
    const allowance = messages.nodes("facts.allowanceValue", {
      allowance: count(messages, usage.allowance),
      included: count(messages, usage.subscription.includedContacts),
      addons: count(messages, usage.subscription.addonContacts),
    });
    facts.push(fact(messages.text("facts.allowance"), allowance, "allowance"));
  }
  return facts;
}

function planFact(messages, subscription) {
  if (subscription === null) return [messages.text("facts.noPlan")];
  return messages.nodes("facts.planValue", {
    plan: planName(messages, subscription.plan),
    cycle: messages.text(CYCLE_KEYS[subscription.billingCycle]),
  });
}

// ---- overusage so far and projected ----

function renderCosts(messages, usage) {
  const facts = [];
  if (!usage.billed) {
    facts.push(fact(messages.text("costs.overusage"), [messages.text("costs.notBilled")], "overusage"));
  } else {
    const { contacts, amountCents } = usage.overusage;
    const values = { contacts: count(messages, contacts), amount: money(messages, amountCents) };
    const label = messages.text(usage.closed ? "costs.billed" : "costs.soFar");
    facts.push(fact(label, messages.nodes("costs.contactsAmount", values, contacts), "overusage"));
    if (!usage.closed) facts.push(...projectionFacts(messages, usage.projection));
    const price = messages.nodes("costs.priceValue", { price: money(messages, OVERUSAGE_UNIT_CENTS) });
    facts.push(fact(messages.text("costs.price"), price, "price"));
  }
  replaceChildren(byId("cost-facts"), facts.flat());
}

function projectionFacts(messages, projection) {
  const projected = messages.nodes("costs.projectedValue", {
    active: count(messages, projection.activeContacts),
    contacts: count(messages, projection.overusageContacts),
    amount: money(messages, projection.amountCents),
  });
  const method = PROJECTION_KEYS[projection.method];
  const how = [method ? messages.text(method) : projection.method];
  return [
    fact(messages.text("costs.projected"), projected, "projection"),
    fact(messages.text("costs.projectionMethod"), how, "projection-method"),
  ];
}

// ---- the ways out of the projected overusage, cheapest first ----

function renderAdvice(messages, advice) {
  show(byId("advice"), advice !== null);
  if (advice === null) return;
  const over = advice.overusageContacts;
  const summary = messages.nodes("advice.summary", { over: count(messages, over) }, over);
  replaceChildren(byId("advice-summary"), summary);
  replaceChildren(
    byId("advice-options"),
    advice.options.map((option, index) => adviceOption(messages, advice, option, index === 0)),
  );
}

function adviceOption(messages, advice, option, cheapest) {
  const upgrade = option.option === "upgrade";
  const contacts = option.option === "addons" ? option.addonContacts : advice.overusageContacts;
  const values = {
    contacts: count(messages, contacts),
    cost: option.costCents === null ? "" : money(messages, option.costCents),
    plan: upgrade ? planName(messages, option.plan) : "",
    allowance: upgrade ? count(messages, option.allowance) : "",
  };
  let key = ADVICE_KEYS[option.option];
  if (upgrade) key = option.costCents === null ? "advice.upgradeUnpriced" : "advice.upgrade";
  const attributes = { "data-option": option.option };
  const item = element("li", { className: "option", attributes }, messages.nodes(key, values, contacts));
  if (cheapest) {
    item.classList.add("is-cheapest");
    const badge =
      advice.savesCents > 0
        ? messages.nodes("advice.cheapestSaves", { saves: money(messages, advice.savesCents) })
        : [messages.text("advice.cheapest")];
    item.append(" ", element("strong", { className: "badge" }, badge));
  }
  return item;
}

// ---- the period's usage alerts ----

function renderAlerts(messages, usage) {
  const items = usage.alerts.map((alert) =>
    element(
      "li",
      {},
      messages.nodes("alerts.item", {
        percent: messages.percent(alert.thresholdPercent),
        allowance: count(messages, alert.allowance),
        date: messages.dateTime(alert.reachedAt, usage.timezone),
      }),
    ),
  );
  const none = [element("li", { text: messages.text("alerts.none") })];
  replaceChildren(byId("alerts"), items.length > 0 ? items : none);
}
