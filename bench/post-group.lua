-- wrk script: POST /chats with a group chat of the same shape as bench/run's events
-- (3 members, a topic). graph-sim creates a new chat for every request (group chats are
-- never deduplicated), so this is the simulator's cost per chat chatprovd asks for.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("GS_TOKEN")
local member = '{"@odata.type":"#microsoft.graph.aadUserConversationMember","roles":["owner"],'
	.. '"user@odata.bind":"https://graph.microsoft.com/v1.0/users(\'%s\')"}'
wrk.body = '{"chatType":"group","topic":"Bench 1","members":['
	.. string.format(member, "00000000-0000-4000-8000-000000000001") .. ","
	.. string.format(member, "00000000-0000-4000-8000-000000000002") .. ","
	.. string.format(member, "00000000-0000-4000-8000-000000000003") .. "]}"
