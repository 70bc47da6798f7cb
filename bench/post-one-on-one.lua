-- wrk script: POST /chats with one fixed oneOnOne pair: after the first request every answer
-- is a dedup hit (nothing created), the cheapest POST /chats graph-sim serves.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("GS_TOKEN")
local member = '{"@odata.type":"#microsoft.graph.aadUserConversationMember","roles":["owner"],'
	.. '"user@odata.bind":"https://graph.microsoft.com/v1.0/users(\'%s\')"}'
wrk.body = '{"chatType":"oneOnOne","members":['
	.. string.format(member, "8b081ef6-4792-4def-b2c9-c363a1bf41d5") .. ","
	.. string.format(member, "82af01c5-f7cc-4a2e-a728-3a5df21afd9d") .. "]}"
