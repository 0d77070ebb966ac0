-- wrk script for bench/introspect.sh: POST /oauth/introspect (form body, HTTP
-- Basic as profile `default`), rotating through the app JWTs in $TOKENS.
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do
  if #line > 0 then tokens[#tokens + 1] = "token=" .. line end
end
if #tokens == 0 then error("no tokens in " .. os.getenv("TOKENS")) end
local headers = {
  ["Authorization"] = os.getenv("BASIC"),
  ["Content-Type"] = "application/x-www-form-urlencoded",
}

local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format("POST", "/oauth/introspect", headers, tokens[i])
end
