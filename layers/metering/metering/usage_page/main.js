// The usage page the CRM embeds: who it is for and in which language come from its address; everything it
// shows comes from the Usage API, for the open period or an earlier one the customer picks.

import { ApiProblem, UsageApi } from "./api.js";
import { contactsCsvFile, saveFile } from "./csv.js";
import { byId, show } from "./dom.js";
import { chooseLocale, loadMessages } from "./i18n.js";
import { accountOf, readLaunch } from "./launch.js";
import { renderContacts, renderInvoices, renderPeriodChoices } from "./tables.js";
import { renderUsage } from "./usage-view.js";

const EARLIER_PERIODS = 12;
const PROBLEM_KEYS = {
  session: "problem.session",
  forbidden: "problem.forbidden",
  unreachable: "problem.unreachable",
  busy: "problem.busy",
  failed: "problem.failed",
};
const CSV_ANNOUNCE_EVERY = 10;

// The periods a customer may pick: the open one and the twelve before it.
function periodChoices(openPeriod) {
  const [year, month] = openPeriod.split("-").map(Number);
  return Array.from({ length: EARLIER_PERIODS + 1 }, (_, back) => {
    const date = new Date(Date.UTC(year, month - 1 - back, 1));
    return `${date.getUTCFullYear()}-${String(date.getUTCMonth() + 1).padStart(2, "0")}`;
  });
}

function setBusy(busy) {
  document.querySelector("main").setAttribute("aria-busy", String(busy));
}

function announce(text) {
  byId("status").textContent = text;
}

function showProblem(text, retryable) {
  byId("problem-text").textContent = text;
  show(byId("retry"), retryable);
  show(byId("problem"), true);
}

class UsagePage {
  constructor(messages, api, accountId) {
    this.messages = messages;
    this.api = api;
    this.accountId = accountId;
    this.openPeriod = null;
    this.usage = null;
    this.contactPages = [];
    this.contactIndex = 0;
    this.invoiceCursor = null;
    this.invoicesShown = false;
    this.request = 0;
    this.failedAction = null;
    this.stopped = false;
    this.downloading = false;
  }

  wire() {
    byId("period").addEventListener("change", (event) => {
      const period = event.target.value;
      this.run((isCurrent) => this.showPeriod(period, isCurrent));
    });
    byId("contacts-next").addEventListener("click", () => {
      this.run((isCurrent) => this.nextContacts(isCurrent));
    });
    byId("contacts-previous").addEventListener("click", () => announce(this.previousContacts()));
    byId("invoices-more").addEventListener("click", () => this.run(() => this.moreInvoices()));
    byId("csv-download").addEventListener("click", () => this.downloadCsv());
    byId("retry").addEventListener("click", () => this.run(this.failedAction));
  }

  // The latest action wins (an earlier one still under way is not shown); it returns what to announce. A
  // failure says what went wrong and keeps the action for "Try again"; after a refusal (the session ended,
  // the token may not read the account) nothing more is asked.
  async run(action) {
    if (this.stopped || action === null) return;
    const request = ++this.request;
    setBusy(true);
    show(byId("problem"), false);
    announce(this.messages.text("status.loading"));
    try {
      const done = await action(() => request === this.request);
      this.failedAction = null;
      if (request === this.request) announce(done ?? "");
    } catch (error) {
      const refused = error instanceof ApiProblem && !error.retryable;
      if (request === this.request || refused) this.fail(error, action);
    } finally {
      if (request === this.request) setBusy(false);
    }
  }

  fail(error, action) {
    const problem = error instanceof ApiProblem ? error : new ApiProblem("failed");
    if (!(error instanceof ApiProblem)) console.error(error);
    this.failedAction = problem.retryable ? action : null;
    this.stopped = !problem.retryable;
    announce("");
    showProblem(this.messages.text(PROBLEM_KEYS[problem.kind]), problem.retryable);
  }

  // The period's usage and its first page of contacts (the open period's, on the first load, with the
  // account's invoices).
  async showPeriod(period, isCurrent = () => true) {
    const firstLoad = this.openPeriod === null;
    const [usage, contacts, invoices] = await Promise.all([
      this.api.usage(firstLoad ? null : period),
      firstLoad ? null : this.api.contacts(period, null),
      this.invoicesShown ? null : this.api.invoices(null),
    ]);
    const page = contacts ?? (await this.api.contacts(usage.period, null));
    if (!isCurrent()) return;
    if (firstLoad) {
      this.openPeriod = usage.period;
      renderPeriodChoices(this.messages, this.openPeriod, periodChoices(this.openPeriod));
      show(document.querySelector(".period-picker"), true);
    }
    this.usage = usage;
    this.contactPages = [page];
    this.contactIndex = 0;
    renderUsage(this.messages, usage);
    this.renderContactPage();
    if (invoices !== null) this.showInvoices(invoices, false);
    show(byId("content"), true);
    return this.messages.text("status.loaded", { month: this.messages.month(usage.period) });
  }

  async nextContacts(isCurrent) {
    if (this.contactIndex + 1 === this.contactPages.length) {
      const shown = this.contactPages[this.contactIndex];
      const page = await this.api.contacts(shown.period, shown.nextCursor);
      if (!isCurrent()) return;
      this.contactPages.push(page);
    }
    this.contactIndex += 1;
    return this.renderContactPage();
  }

  previousContacts() {
    if (this.contactIndex === 0) return "";
    this.contactIndex -= 1;
    return this.renderContactPage();
  }

  // The contacts page in view; what to announce of it.
  renderContactPage() {
    const page = this.contactPages[this.contactIndex];
    const offset = this.contactPages
      .slice(0, this.contactIndex)
      .reduce((sum, earlier) => sum + earlier.contacts.length, 0);
    renderContacts(this.messages, page, {
      offset,
      total: this.usage.activeContacts,
      timezone: this.usage.timezone,
      hasPrevious: this.contactIndex > 0,
    });
    return this.messages.text("status.contactsShown", {
      first: this.messages.count(offset + 1),
      last: this.messages.count(offset + page.contacts.length),
    });
  }

  async moreInvoices() {
    this.showInvoices(await this.api.invoices(this.invoiceCursor), true);
    return this.messages.text("status.invoicesShown");
  }

  showInvoices(page, append) {
    this.invoicesShown = true;
    this.invoiceCursor = page.nextCursor;
    renderInvoices(this.messages, page.invoices, {
      append,
      hasMore: page.nextCursor !== null,
      timezone: this.usage.timezone,
    });
  }

  // Every contact of the shown period as one CSV file, page by page, with its progress (announced every
  // tenth page, so a screen reader is not flooded on a large period).
  async downloadCsv() {
    if (this.downloading || this.stopped || this.usage === null) return;
    this.downloading = true;
    const { messages } = this;
    const { period, activeContacts } = this.usage;
    const button = byId("csv-download");
    const progress = byId("csv-progress");
    const csvStatus = byId("csv-status");
    button.setAttribute("aria-disabled", "true");
    progress.max = Math.max(activeContacts, 1);
    progress.value = 0;
    show(progress, true);
    show(byId("csv-progress-label"), true);
    const running = (done, total) =>
      messages.text("csv.running", { done: messages.count(done), total: messages.count(total) });
    csvStatus.textContent = running(0, activeContacts);
    let pages = 0;
    try {
      const { blob, rows } = await contactsCsvFile(this.api, period, (rows) => {
        pages += 1;
        progress.max = Math.max(activeContacts, rows, 1);
        progress.value = rows;
        if (pages % CSV_ANNOUNCE_EVERY === 0) csvStatus.textContent = running(rows, progress.max);
      });
      saveFile(blob, `active-contacts-${this.accountId}-${period}.csv`);
      csvStatus.textContent = messages.text("csv.done", { rows: messages.count(rows) }, rows);
    } catch (error) {
      csvStatus.textContent = messages.text("csv.failed");
      if (error instanceof ApiProblem && !error.retryable) this.fail(error, null);
      else if (!(error instanceof ApiProblem)) console.error(error);
    } finally {
      this.downloading = false;
      button.removeAttribute("aria-disabled");
      show(progress, false);
      show(byId("csv-progress-label"), false);
    }
  }
}

async function main() {
  const launch = readLaunch(window.location, window.history);
  const messages = await loadMessages(chooseLocale(launch.lang, navigator.languages));
  messages.translate(document);
  const claim = document.querySelector('meta[name="account-claim"]').content;
  const accountId = launch.token ? accountOf(launch.token, claim) : null;
  if (accountId === null) {
    showProblem(messages.text(launch.token ? "problem.session" : "problem.noToken"), false);
    setBusy(false);
    return;
  }
  const page = new UsagePage(messages, new UsageApi(launch.token, accountId), accountId);
  page.wire();
  await page.run((isCurrent) => page.showPeriod(null, isCurrent));
}

main();
