// The dashboard API (docs/dashboard-api.md): GET JSON, every failure as an ApiError whose
// message is meant for the page.
export const BASE = location.pathname.replace(/\/+$/, "").replace(/\/index\.html$/, "") || "/dashboard";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const REASONS = {
  400: "Malformed request",
  404: "Not found",
  410: "Gone",
  422: "Malformed request",
  429: "Too many requests; slow down and retry",
  503: "The market cannot reach the chain or its database right now",
};

export async function getJSON(path) {
  let response;
  try {
    response = await fetch(`${BASE}/api/${path}`, { headers: { accept: "application/json" } });
  } catch {
    throw new ApiError(0, "The market is not reachable (the request failed). Is it running? "
      + "The page retries when the market is back.");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
    const reason = REASONS[response.status] || `The market answered ${response.status}`;
    throw new ApiError(response.status, `${reason} (${response.status}): ${detail}`);
  }
  if (body === null) throw new ApiError(response.status, "The market answered with something that is not JSON.");
  return body;
}
