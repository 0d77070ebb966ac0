-- wrk script for bench/load.sh: POST /auth/token (or, with WRK_METHOD=GET, a
-- proxied route) with X-CSRF and a session cookie, rotating through the cookie
-- values in the file named by $COOKIES.
local cookies = {}
for line in io.lines(os.getenv("COOKIES")) do
  if #line > 0 then cookies[#cookies + 1] = "__Host-avemint=" .. line end
end
if #cookies == 0 then error("no cookies in " .. os.getenv("COOKIES")) end

local method = os.getenv("WRK_METHOD") or "POST"
-- A GET carries no body (and so no Content-Length), as a browser sends it.
local body = nil
if method ~= "GET" then body = "" end

local i = 0
request = function()
  i = i % #cookies + 1
  return wrk.format(method, nil, { ["X-CSRF"] = "1", ["Cookie"] = cookies[i] }, body)
end
