// The Usage API as the page reads it: one account, with the customer's token, on the page's own origin. The
// token stays in this object (memory only) and goes out only in the Authorization header.

const CONTACTS_PER_PAGE = 25;
const CSV_CONTACTS_PER_PAGE = 1000;
const INVOICES_PER_PAGE = 12;
const NEXT_LINK = /<([^>]*)>\s*;\s*rel="?next"?/;

// Why a call failed, as the page tells the customer: "session" (401: the token expired or is not valid),
// "forbidden" (403), "unreachable" (no answer), "busy" (429, 503), "failed" (anything else).
export class ApiProblem extends Error {
  constructor(kind, status = 0) {
    super(`usage API: ${kind}${status ? ` (HTTP ${status})` : ""}`);
    this.kind = kind;
    this.status = status;
  }

  get retryable() {
    return !["session", "forbidden"].includes(this.kind);
  }
}

function problemOf(status) {
  if (status === 401) return new ApiProblem("session", status);
  if (status === 403) return new ApiProblem("forbidden", status);
  if (status === 429 || status === 503) return new ApiProblem("busy", status);
  return new ApiProblem("failed", status);
}

export class UsageApi {
  #token;

  constructor(token, accountId, base = new URL("../v1/", document.baseURI)) {
    this.#token = token;
    this.accountRoot = new URL(`accounts/${encodeURIComponent(accountId)}/`, base);
  }

  usage(period) {
    return this.#json("usage", period ? { period } : {});
  }

  contacts(period, cursor) {
    return this.#json("contacts", { period, limit: CONTACTS_PER_PAGE, ...(cursor ? { cursor } : {}) });
  }

  invoices(cursor) {
    return this.#json("invoices", { limit: INVOICES_PER_PAGE, ...(cursor ? { cursor } : {}) });
  }

  // Every contact of the period as CSV, one page of 1,000 at a time: yields each page's text and how many
  // contacts it holds, following the API's Link to the next page until there is none.
  async *contactsCsv(period) {
    let url = this.#url("contacts", { period, limit: CSV_CONTACTS_PER_PAGE });
    while (url !== null) {
      const response = await this.#get(url, "text/csv");
      const text = await response.text();
      yield text;
      const next = NEXT_LINK.exec(response.headers.get("link") ?? "");
      url = next ? new URL(next[1], url) : null;
    }
  }

  async #json(route, query) {
    const response = await this.#get(this.#url(route, query), "application/json");
    return response.json();
  }

  #url(route, query) {
    const url = new URL(route, this.accountRoot);
    for (const [name, value] of Object.entries(query)) url.searchParams.set(name, String(value));
    return url;
  }

  async #get(url, accept) {
    let response;
    try {
      response = await fetch(url, {
        headers: { Authorization: `Bearer ${this.#token}`, Accept: accept },
        cache: "no-store",
        credentials: "omit",
      });
    } catch {
      throw new ApiProblem("unreachable");
    }
    if (!response.ok) throw problemOf(response.status);
    return response;
  }
}
