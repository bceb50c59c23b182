// The whole period's contacts as one CSV file, assembled in the browser from the API's CSV pages: each page
// is added to a Blob's parts as it arrives (its header row dropped after the first), so a period of 500,000
// contacts is 500 requests and one file, never one huge response.

const LINE_END = "\r\n";

export async function contactsCsvFile(api, period, onPage) {
  const parts = [];
  let rows = 0;
  for await (const page of api.contactsCsv(period)) {
    const headerEnd = page.indexOf(LINE_END) + LINE_END.length;
    const body = page.slice(headerEnd);
    if (parts.length === 0) parts.push(page.slice(0, headerEnd));
    if (body !== "") parts.push(body);
    rows += recordCount(body);
    onPage(rows);
  }
  return { blob: new Blob(parts, { type: "text/csv;charset=utf-8" }), rows };
}

// The records of CSV text whose every record ends in CRLF: its line ends outside quoted fields.
function recordCount(text) {
  let records = 0;
  let quoted = false;
  for (let index = 0; index < text.length; index += 1) {
    const character = text[index];
    if (character === '"') quoted = !quoted;
    else if (!quoted && character === "\n") records += 1;
  }
  return records;
}

export function saveFile(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
