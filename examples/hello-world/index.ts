export class HelloWorldService {
  helloWorld(): string {
    console.log("Hello world - request received!")
    return "Hello world!";
  }
}
