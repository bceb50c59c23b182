// The page's words, numbers, money and dates in the customer's language: one catalogue per language (en.json,
// de.json), formats from Intl for the chosen locale.

const LANGUAGES = ["en", "de"];
const FALLBACK_LOCALE = "en";
const PLACEHOLDER = /\{(\w+)\}/g;

// The first of the CRM's choice and the browser's languages that has a catalogue ("de", "de-AT", "en-GB").
export function chooseLocale(requested, browserLanguages) {
  for (const tag of [requested, ...browserLanguages]) {
    const locale = parsedLocale(tag);
    if (locale && LANGUAGES.includes(locale.language)) return locale.baseName;
  }
  return FALLBACK_LOCALE;
}

function parsedLocale(tag) {
  if (!tag) return null;
  try {
    return new Intl.Locale(tag);
  } catch {
    return null;
  }
}

export async function loadMessages(locale) {
  const language = new Intl.Locale(locale).language;
  const response = await fetch(`${language}.json`, { credentials: "omit" });
  if (!response.ok) throw new Error(`catalogue ${language}: HTTP ${response.status}`);
  return new Messages(locale, language, await response.json());
}

export class Messages {
  constructor(locale, language, catalogue) {
    this.locale = locale;
    this.language = language;
    this.catalogue = catalogue;
    this.plurals = new Intl.PluralRules(locale);
    this.integers = new Intl.NumberFormat(locale, { maximumFractionDigits: 0 });
    this.euros = new Intl.NumberFormat(locale, { style: "currency", currency: "EUR" });
    this.percents = new Intl.NumberFormat(locale, { style: "percent", maximumFractionDigits: 0 });
  }

  // The message's template: a string, or by plural category ({"one": ..., "other": ...}) chosen by `count`.
  template(key, count) {
    const entry = this.catalogue[key];
    if (entry === undefined) {
      console.error(`usage page: no message "${key}" in the ${this.language} catalogue`);
      return key;
    }
    if (typeof entry === "string") return entry;
    return entry[this.plurals.select(count ?? 0)] ?? entry.other;
  }

  // The message as text, each {name} replaced by values[name].
  text(key, values = {}, count = undefined) {
    return this.template(key, count).replace(PLACEHOLDER, (_, name) => String(values[name] ?? ""));
  }

  // The message as nodes, each {name} replaced by values[name] (a node, e.g. a <data> element, or text).
  nodes(key, values = {}, count = undefined) {
    return this.template(key, count)
      .split(PLACEHOLDER)
      .map((part, index) => (index % 2 === 0 ? part : values[part] ?? ""))
      .filter((part) => part !== "");
  }

  count(value) {
    return this.integers.format(value);
  }

  // Integer cents as euros, exactly: Intl formats the decimal string, never a float.
  money(cents) {
    const whole = Math.trunc(Math.abs(cents) / 100);
    const rest = String(Math.abs(cents) % 100).padStart(2, "0");
    return this.euros.format(`${cents < 0 ? "-" : ""}${whole}.${rest}`);
  }

  percent(value) {
    return this.percents.format(value / 100);
  }

  // The days of a period as one range in its zone: "1–30 November 2026".
  dateRange(startIso, endIso, timeZone) {
    const format = new Intl.DateTimeFormat(this.locale, { dateStyle: "long", timeZone });
    const lastInstant = new Date(Date.parse(endIso) - 1);
    return format.formatRange(new Date(startIso), lastInstant);
  }

  date(iso, timeZone) {
    return new Intl.DateTimeFormat(this.locale, { dateStyle: "medium", timeZone }).format(new Date(iso));
  }

  dateTime(iso, timeZone) {
    const options = { dateStyle: "medium", timeStyle: "short", timeZone };
    return new Intl.DateTimeFormat(this.locale, options).format(new Date(iso));
  }

  // A period key ("2026-11") as its month: "November 2026".
  month(period) {
    const [year, month] = period.split("-").map(Number);
    const format = new Intl.DateTimeFormat(this.locale, { month: "long", year: "numeric", timeZone: "UTC" });
    return format.format(new Date(Date.UTC(year, month - 1, 15)));
  }

  // Every element with data-i18n gets its message; the document its language and title.
  translate(root) {
    root.documentElement.lang = this.locale;
    for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = this.text(node.dataset.i18n);
  }
}
