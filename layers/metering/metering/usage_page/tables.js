// The lists of the page: the period picker, a page of counted contacts (each with the event that made it
// active) and the account's invoices.

import { byId, element, replaceChildren, show } from "./dom.js";
import { count, money, planName } from "./values.js";

const EVENT_KEYS = {
  "Contact Created": "event.contactCreated",
  "Contact Status Changed": "event.contactStatusChanged",
  "Message Sent": "event.messageSent",
  "Note Added": "event.noteAdded",
  "Contact Property Changed": "event.contactPropertyChanged",
  "Status Renamed": "event.statusRenamed",
};
const CONTACT_COLUMNS = 4;

export function renderPeriodChoices(messages, openPeriod, choices) {
  const select = byId("period");
  const label = (period) =>
    period === openPeriod
      ? messages.text("period.open", { month: messages.month(period) })
      : messages.month(period);
  replaceChildren(
    select,
    choices.map((period) => element("option", { text: label(period), attributes: { value: period } })),
  );
  select.value = openPeriod;
}

export function renderContacts(messages, page, { offset, total, timezone, hasPrevious }) {
  const month = messages.month(page.period);
  byId("contacts-caption").textContent = messages.text("contacts.caption", { month });
  const rows = page.contacts.map((contact) => contactRow(messages, contact, timezone));
  const none = element("tr", {}, [
    element("td", { text: messages.text("contacts.none"), attributes: { colspan: CONTACT_COLUMNS } }),
  ]);
  replaceChildren(byId("contacts").tBodies[0], rows.length > 0 ? rows : [none]);
  const range =
    rows.length > 0
      ? messages.nodes("contacts.range", {
          first: count(messages, offset + 1),
          last: count(messages, offset + rows.length),
          total: count(messages, Math.max(total, offset + rows.length)),
        })
      : [];
  replaceChildren(byId("contacts-range"), range);
  byId("contacts-previous").disabled = !hasPrevious;
  byId("contacts-next").disabled = page.nextCursor === null;
}

function contactRow(messages, contact, timezone) {
  const eventKey = EVENT_KEYS[contact.detailType];
  const when = element("time", {
    text: messages.dateTime(contact.occurredAt, timezone),
    attributes: { datetime: contact.occurredAt },
  });
  return element("tr", {}, [
    element("td", { text: contact.contactId }),
    element("td", { text: eventKey ? messages.text(eventKey) : contact.detailType }),
    element("td", {}, [when]),
    element("td", { className: "id", text: contact.eventId }),
  ]);
}

export function renderInvoices(messages, invoices, { append, hasMore, timezone }) {
  const body = byId("invoices").tBodies[0];
  const rows = invoices.map((invoice) =>
    element("tr", { attributes: { "data-period": invoice.period } }, [
      element("td", { text: messages.month(invoice.period) }),
      element("td", { text: planName(messages, invoice.plan) }),
      element("td", {}, [count(messages, invoice.activeContacts)]),
      element("td", {}, [count(messages, invoice.overusageContacts)]),
      element("td", {}, [money(messages, invoice.amountCents)]),
      element("td", { text: messages.date(invoice.issuedAt, timezone) }),
    ]),
  );
  if (append) body.append(...rows);
  else replaceChildren(body, rows);
  show(byId("invoices-empty"), body.rows.length === 0);
  show(byId("invoices"), body.rows.length > 0);
  show(byId("invoices-more"), hasMore);
}
