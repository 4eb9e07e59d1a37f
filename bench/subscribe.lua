-- wrk: POST /subscribe with a fresh address each request.
counter = 0
request = function()
  counter = counter + 1
  local body = "email=bench" .. math.random(1, 1000000000) .. "-" .. counter .. "@example.org&next=%2F"
  return wrk.format("POST", "/subscribe", {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
