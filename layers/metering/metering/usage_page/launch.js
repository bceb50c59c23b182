// What the CRM hands the page in its address: the customer's token and the language, in the fragment (never
// sent to a server) or, for the language, the query. The token is taken out of the address at once, so it is
// not in the history, a bookmark or a copied link.

export function readLaunch(location, history) {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const query = new URLSearchParams(location.search);
  const launch = { token: fragment.get("token"), lang: fragment.get("lang") ?? query.get("lang") };
  if (location.hash) history.replaceState(history.state, "", `${location.pathname}${location.search}`);
  return launch;
}

// The account a token names, from its claims (the API checks the signature; the page only needs the id).
export function accountOf(token, claim) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = new TextDecoder().decode(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)));
    const value = JSON.parse(json)[claim];
    return typeof value === "string" && value !== "" ? value : null;
  } catch {
    return null;
  }
}
