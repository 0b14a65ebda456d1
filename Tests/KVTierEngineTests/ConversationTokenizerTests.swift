import XCTest

@testable import KVTierEngine
@testable import KVTierModel
@testable import KVTierTestSupport

/// A chat tokenized once, message by message, put together for any session's replies.
final class ConversationTokenizerTests: XCTestCase {
    func testPiecesPutTogetherAsTheWholeChatTokenizesAndRepliesTakeTheirIds() throws {
        let model = try LlamaModel(path: TinyModel(context: 256).write())
        let conversation = ConversationTokenizer(model: model)
        let messages = [
            ChatMessage(role: "user", content: "first question"), ChatMessage(role: "assistant", content: "an answer"),
            ChatMessage(role: "user", content: "second question"),
        ]
        let chat = conversation.tokenize(messages)
        // Ordinary text: the same ids as the whole rendered chat.
        let whole = model.tokenizer.encode(model.template.render(messages), addSpecial: true, parseSpecial: true)
        XCTAssertEqual(chat.tokens(), whole)
        // A session that generated the assistant's text reads its own ids there, and only there.
        let ids: [Int32] = [7, 8, 9, 10, 11]
        let own = chat.tokens(replies: ["an answer": ids])
        let plain = chat.tokens()
        let answer = model.tokenizer.encode("an answer", addSpecial: false, parseSpecial: false)
        let at = try XCTUnwrap(
            (0...(plain.count - answer.count)).first { Array(plain[$0..<($0 + answer.count)]) == answer })
        XCTAssertEqual(Array(own[..<at]), Array(plain[..<at]))
        XCTAssertEqual(Array(own[at..<(at + ids.count)]), ids)
        XCTAssertEqual(Array(own[(at + ids.count)...]), Array(plain[(at + answer.count)...]))
        XCTAssertEqual(chat.tokens(replies: ["another text": ids]), plain, "a reply under other text is not used")
        XCTAssertEqual(conversation.tokens(for: messages, replies: ["an answer": ids]), own)
    }
}
