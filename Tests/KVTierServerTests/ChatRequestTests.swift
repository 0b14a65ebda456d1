import XCTest

@testable import KVTierServer

/// The chat request as current SDKs send it: every form kvtierd honours decodes, and what it
/// cannot honour is refused naming the field as a JSON path (no model needed).
final class ChatRequestTests: XCTestCase {
    private func validated(_ json: String) throws(APIError) -> ValidatedChatRequest {
        try ValidatedChatRequest(body: Array(json.utf8), sessionHeader: nil, limits: ServerLimits())
    }

    func testTheFormsSDKsSendAreRead() throws {
        let r = try validated(
            #"""
            {"model": "gpt-4o", "max_completion_tokens": 7, "max_tokens": 99, "stream": true,
             "stream_options": {"include_usage": true}, "n": 1, "logprobs": false, "user": "u1", "store": false,
             "frequency_penalty": 0, "response_format": {"type": "text"}, "tool_choice": "none", "tools": [],
             "messages": [
               {"role": "developer", "content": "Be brief."},
               {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "you."}]},
               {"role": "assistant", "content": null},
               {"role": "user", "content": "Again."}]}
            """#)
        XCTAssertEqual(r.maxTokens, 7, "max_completion_tokens wins over max_tokens")
        XCTAssertTrue(r.stream)
        XCTAssertTrue(r.includeUsage)
        XCTAssertEqual(r.messages.map(\.role), ["system", "user", "assistant", "user"])
        XCTAssertEqual(r.messages.map(\.content), ["Be brief.", "Hello, you.", "", "Again."])
        XCTAssertEqual(try validated(#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#).maxTokens, 5)
        XCTAssertNil(r.logprobs)
        XCTAssertEqual(try validated(#"{"messages":[{"role":"user","content":"hi"}],"logprobs":true}"#).logprobs, 0)
        XCTAssertEqual(
            try validated(#"{"messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":5}"#).logprobs,
            5)
    }

    func testWhatCannotBeHonouredIsRefusedByName() {
        let user = #""messages":[{"role":"user","content":"hi"}]"#
        let cases: [(String, String)] = [
            (
                "{\(user),\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}",
                "tools: kvtierd has no tool calling"
            ),
            ("{\(user),\"tool_choice\":\"auto\"}", "tool_choice:"),
            (
                "{\(user),\"response_format\":{\"type\":\"json_schema\"}}",
                "response_format.type: 'json_schema' is not supported"
            ),
            ("{\(user),\"n\":0}", "n: must be 1 to 16"),
            ("{\(user),\"n\":17}", "n: must be 1 to 16"),
            ("{\(user),\"top_logprobs\":2}", "top_logprobs: needs \"logprobs\": true"),
            ("{\(user),\"logprobs\":true,\"top_logprobs\":21}", "top_logprobs: must be 0 to 20"),
            ("{\(user),\"presence_penalty\":0.5}", "presence_penalty: penalties are not supported"),
            ("{\(user),\"logit_bias\":{\"50256\":-100}}", "logit_bias:"),
            ("{\(user),\"audio\":{\"voice\":\"x\"}}", "audio:"),
            (
                #"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
                "messages[0].content[0].type: 'image_url' is not supported"
            ),
            (
                #"{"messages":[{"role":"user","content":5}]}"#,
                "messages[0].content: expected a string or a list of text parts"
            ),
            (
                #"{"messages":[{"role":"user","content":null}]}"#,
                "messages[0].content: expected a string or a list of text parts (null only"
            ),
            (
                #"{"messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
                "messages[0].content[0].text: expected a string"
            ),
            (
                #"{"messages":[{"role":"tool","content":"42"},{"role":"user","content":"hi"}]}"#,
                "messages[0].role: 'tool' messages need tool calling"
            ),
            (#"{"messages":[{"role":"wizard","content":"hi"}]}"#, "messages[0].role: unknown role 'wizard'"),
            (#"{"messages":[{"content":"hi"}]}"#, "messages[0].role: missing"),
            (#"{"messages":"hi"}"#, "messages: expected a list"),
            (#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#, "temperature: expected a number"),
            (
                #"{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":0}"#,
                "max_completion_tokens (or max_tokens) must be between 1"
            ),
            (#"{"model":"x"}"#, "messages: missing"),
            ("{\"messages\":", "the request body is not valid JSON"),
        ]
        for (body, expected) in cases {
            XCTAssertThrowsError(try validated(body), body) { error in
                let e = error as? APIError
                XCTAssertEqual(e?.status, 400, body)
                XCTAssertTrue(
                    e?.error.message.contains(expected) == true,
                    "\(e?.error.message ?? "\(error)") should contain \(expected)")
                XCTAssertFalse(
                    e?.error.message.contains("Index") == true || e?.error.message.contains("Swift") == true,
                    "Swift terms: \(e?.error.message ?? "")")
            }
        }
    }

    private func textCompletion(_ json: String) throws(APIError) -> ValidatedChatRequest {
        try ValidatedChatRequest(textCompletionBody: Array(json.utf8), sessionHeader: nil, limits: ServerLimits())
    }

    /// `/v1/completions`: the prompt is one plain-text message (no template), max_tokens
    /// defaults to 16, and what cannot be honoured is refused by name.
    func testTextCompletionRequests() throws {
        let r = try textCompletion(#"{"model":"m","prompt":"Once upon","stop":"\n","stream":true,"n":1,"best_of":1}"#)
        XCTAssertTrue(r.isTextCompletion)
        XCTAssertEqual(r.maxTokens, 16)
        XCTAssertEqual(r.messages.count, 1)
        XCTAssertEqual(r.messages[0].content, "Once upon")
        XCTAssertNotEqual(r.messages[0].role, "user", "not a chat message: no template around it")
        XCTAssertEqual(r.stopSequences, ["\n"])
        XCTAssertEqual(try textCompletion(#"{"prompt":["one"],"max_tokens":3}"#).maxTokens, 3)
        XCTAssertEqual(try textCompletion(#"{"prompt":"a","n":3}"#).choices, 3)
        let cases: [(String, String)] = [
            (#"{"prompt":"a","n":20}"#, "n:"),
            (#"{"prompt":"a","best_of":3}"#, "best_of:"),
            (#"{"prompt":"a","echo":true}"#, "echo:"),
            (#"{"prompt":"a","suffix":"z"}"#, "suffix:"),
            (#"{"prompt":"a","logprobs":2}"#, "logprobs:"),
            (#"{"prompt":[1,2,3]}"#, "prompt:"),
            (#"{"prompt":["a","b"]}"#, "prompt:"),
            (#"{"prompt":""}"#, "prompt:"),
            (#"{"max_tokens":3}"#, "prompt:"),
            (#"{"prompt":"a","presence_penalty":1}"#, "presence_penalty:"),
            (#"{"prompt":"a","max_tokens":0}"#, "max_tokens"),
        ]
        for (body, field) in cases {
            XCTAssertThrowsError(try textCompletion(body), body) { error in
                let message = (error as? APIError)?.error.message ?? "\(error)"
                XCTAssertTrue(message.contains(field), "\(body): \(message)")
            }
        }
        // A chat message can never claim the completion prompt's role.
        XCTAssertThrowsError(
            try validated(#"{"messages":[{"role":"kvtier.completion-prompt","content":"x"}]}"#))
    }
}
